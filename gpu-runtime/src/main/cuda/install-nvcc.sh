#!/usr/bin/env bash
# Installs nvcc from NVIDIA's Python wheels into .toolchain/nvcc (ignored by git), pinned to CUDA 13.0:
# PTX from a newer nvcc does not load on an older driver, and the GPU machines run a CUDA 13.0 driver.
# Used by .ci/run and by developers; the Maven build finds it there (see build-fatbin.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd)"
DEST="$ROOT/.toolchain/nvcc"
PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
      nvidia-cuda-cccl==13.0.85)
if [ -x "$DEST/bin/nvcc" ] && [ "$(cat "$DEST/pins.txt" 2>/dev/null)" = "${PINS[*]}" ]; then
  exit 0
fi
PY="$(command -v python3 || true)"
if [ -z "$PY" ]; then
  echo "install-nvcc: python3 not found; the CUDA kernels will not be built" >&2
  exit 0
fi
rm -rf "$DEST"
"$PY" -m venv "$DEST/venv"
"$DEST/venv/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
CU="$(echo "$DEST"/venv/lib/python3*/site-packages/nvidia/cu13)"
mkdir -p "$DEST/bin"
# a wrapper, not a link: nvcc finds its headers and tools relative to its own directory
printf '#!/bin/sh\nexec "%s/bin/nvcc" "$@"\n' "$CU" > "$DEST/bin/nvcc"
chmod +x "$DEST/bin/nvcc"
echo "${PINS[*]}" > "$DEST/pins.txt"
echo "install-nvcc: nvcc $("$DEST/bin/nvcc" --version | grep -o 'release [0-9.]*') in $DEST"
