#!/usr/bin/env bash
# Compiles the .cu kernels into one fatbin (sm_80 and sm_90 machine code plus compute_90 PTX) shipped as
# the resource org/sparkatron/device/cuda/sparkatron_kernels.fatbin. nvcc is looked for in $NVCC,
# .toolchain/nvcc (gpu-runtime/src/main/cuda/install-nvcc.sh), PATH and /usr/local/cuda/bin; without it
# the build says so and skips (the CUDA device then reports that its kernels are missing).
#   build-fatbin.sh OUT_DIR
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
OUT="$1"
NV="${NVCC:-}"
for c in "$ROOT/.toolchain/nvcc/bin/nvcc" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
  [ -z "$NV" ] && [ -n "$c" ] && [ -x "$c" ] && NV="$c"
done
if [ -z "$NV" ]; then
  echo "cuda kernels: nvcc not found (run gpu-runtime/src/main/cuda/install-nvcc.sh): the fatbin is not built; the CUDA device will be unavailable"
  exit 0
fi
mkdir -p "$OUT"
FAT="$OUT/sparkatron_kernels.fatbin"
if [ -f "$FAT" ] && [ -z "$(find "$HERE" -newer "$FAT" -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.sh' \) | head -1)" ]; then
  exit 0
fi
echo "cuda kernels: $NV -> $FAT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# one translation unit: the kernels share common.cuh, and one module keeps loading to one call
for f in "$HERE"/*.cu; do echo "#include \"$f\""; done > "$TMP/all.cu"
"$NV" -fatbin -O3 -std=c++17 -I "$HERE" \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
  -o "$TMP/k.fatbin" "$TMP/all.cu"
mv "$TMP/k.fatbin" "$FAT"
