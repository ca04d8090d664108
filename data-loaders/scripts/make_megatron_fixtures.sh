#!/usr/bin/env bash
# Regenerates data-loaders/src/test/resources/megatron_core from Megatron Core itself (see
# make_megatron_fixtures.py). Not part of CI: the fixtures are committed and the Java tests read them
# without Python. Needs Debian 12 (apt, root), network access to Debian and PyPI, a C++ compiler, and
# jtokkit's jar in ~/.m2 (any Maven build of the project brings it).
#
#   data-loaders/scripts/make_megatron_fixtures.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
module="$(dirname "$here")"
out="${1:-$module/src/test/resources/megatron_core}"
venv="$module/target/megatron-venv"

# CPU torch and numpy from Debian (PyPI's torch wheels pull in the CUDA libraries).
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3-venv python3-dev g++ make \
    python3-torch=1.13.1+dfsg-4 python3-numpy=1:1.24.2-1+deb12u1 >/dev/null

rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --no-deps -r "$here/megatron-requirements.txt"

# Megatron's C++ helpers, built from the package's own helpers.cpp with the recipe of
# megatron/core/datasets/Makefile (the wheel's prebuilt module is removed so this one is used).
datasets="$("$venv/bin/python" -c 'import importlib.util,os;print(os.path.join(list(importlib.util.find_spec("megatron").submodule_search_locations)[0],"core","datasets"))')"
rm -f "$datasets"/helpers_cpp*.so
(cd "$datasets" && g++ -O3 -Wall -shared -std=c++17 -fPIC $("$venv/bin/python" -m pybind11 --includes) \
    helpers.cpp -o "helpers_cpp$(/usr/bin/python3-config --extension-suffix)")

jar="$(ls "$HOME"/.m2/repository/com/knuddels/jtokkit/*/jtokkit-*.jar | tail -1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && unzip -q "$jar" com/knuddels/jtokkit/r50k_base.tiktoken)

rm -rf "$out"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$venv/bin/python" "$here/make_megatron_fixtures.py" "$out" \
    "$work/com/knuddels/jtokkit/r50k_base.tiktoken" "$module/src/test/resources/tokenizer/tiny_bpe_tokenizer.json"
du -sh "$out"
