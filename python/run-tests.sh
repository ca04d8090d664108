#!/usr/bin/env bash
# The Python side's tests, run by Maven (module python, phase integration-test) as part of the README's
# test command: makes a virtual environment with the pinned requirements (once; again when they change),
# installs the package from this checkout as a user would (pip install ./python, jars bundled), and runs
# pytest: the wrappers, persistence, and notebooks/pyspark-quickstart.ipynb executed by nbclient.
#   SPARKATRON_PYENV   where the environment lives (default build-out/pyenv)
#   PYTEST_ARGS        extra pytest arguments, e.g. "-k notebook"
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="${SPARKATRON_PYENV:-$ROOT/build-out/pyenv}"
REQ="$HERE/requirements-test.txt"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$WANT" ]; then
  echo "python tests: setting up $VENV (pip install -r python/requirements-test.txt; pyspark is about 450 MB the first time)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  echo "$WANT" > "$VENV/.requirements.sha256"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "$HERE"
cd "$HERE/tests"
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} .
