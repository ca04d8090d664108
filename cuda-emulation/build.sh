#!/usr/bin/env bash
# Builds the emulated CUDA: CPU stand-ins for libcuda.so.1, libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13 and libnccl.so.2, plus our .cu kernels compiled for the CPU by g++
# (libsparkatron_kernels_emu.so). Test support only: nothing here ships.
#
#   cuda-emulation/build.sh OUT_DIR KERNEL_DIR JAR...
#
# JARs are those holding the JNI libraries that will bind to the stand-ins (JCuda's natives, JavaCPP's
# CUDA presets): every cu*/cuda*/cublas*/nccl* function they import and the emulation lacks gets a
# generated stub returning NOT_SUPPORTED, so a call to it is a Java exception instead of a dead JVM.
# Without g++ (or nm) this prints why and builds nothing; the CUDA emulation tests then skip.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$1"; KDIR="$2"; shift 2
for tool in g++ nm unzip; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "cuda-emulation: $tool not found: the emulated CUDA is not built (CUDA emulation tests will skip)"
    exit 0
  fi
done
mkdir -p "$OUT" "$OUT/tmp"  # tmp: where the test JVM extracts JCuda's native library
STAMP="$OUT/.built"
if [ -f "$STAMP" ] && [ -z "$(find "$HERE" "$KDIR" "$@" -newer "$STAMP" -type f 2>/dev/null | head -1)" ]; then
  exit 0  # up to date
fi
echo "cuda-emulation: building the emulated CUDA into $OUT"
OBJ="$OUT/obj"; JNI="$OUT/jni"
rm -rf "$OBJ" "$JNI"; mkdir -p "$OBJ" "$JNI"
for jar in "$@"; do
  unzip -j -o -q "$jar" '*libJCudaDriver*.so' '*libjnicudart.so' '*libjnicublas.so' '*libjninccl.so' -d "$JNI" 2>/dev/null || true
done
: > "$OBJ/imports.txt"
for so in "$JNI"/*.so; do
  [ -f "$so" ] && nm -D --undefined-only "$so" | awk '{print $2}' | sed 's/@.*//' >> "$OBJ/imports.txt"
done
grep -E '^cuda' "$OBJ/imports.txt" > "$OBJ/cudart.syms" || true
grep -E '^cublasLt' "$OBJ/imports.txt" > "$OBJ/cublasLt.syms" || true
grep -E '^cublas' "$OBJ/imports.txt" | grep -v '^cublasLt' > "$OBJ/cublas.syms" || true
grep -E '^p?nccl' "$OBJ/imports.txt" > "$OBJ/nccl.syms" || true
grep -E '^cu' "$OBJ/imports.txt" | grep -Ev '^(cuda|cublas)' > "$OBJ/cuda.syms" || true

CXX=(g++ -std=c++17 -O2 -g -fPIC -Wall -Wno-unused-function -I "$HERE/include" -I "$HERE/src")
defined() { nm --defined-only -g "$@" | awk '$2 == "T" {print $3}'; }

# lib NAME SONAME SYMS STUBCODE LINKCUDA SOURCES...
lib() {
  local name="$1" soname="$2" syms="$3" code="$4" linkcuda="$5"; shift 5
  local objs=()
  for src in "$@"; do
    local o="$OBJ/$(basename "$src" .cpp).o"
    "${CXX[@]}" -c "$src" -o "$o"
    objs+=("$o")
  done
  if [ ${#objs[@]} -gt 0 ]; then defined "${objs[@]}" > "$OBJ/$name.defined"; else : > "$OBJ/$name.defined"; fi
  "$HERE/tools/gen_stubs.sh" "$OBJ/$name-stubs.cpp" "$code" "$syms" "$OBJ/$name.defined"
  "${CXX[@]}" -w -c "$OBJ/$name-stubs.cpp" -o "$OBJ/$name-stubs.o"
  local link=()
  [ "$linkcuda" = yes ] && link=(-L"$OUT" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN')
  "${CXX[@]}" -shared -Wl,-soname,"$soname" -o "$OUT/$soname" "${objs[@]}" "$OBJ/$name-stubs.o" "${link[@]}" -lpthread -ldl
}

lib cuda libcuda.so.1 "$OBJ/cuda.syms" 801 no "$HERE/src/driver.cpp" "$HERE/src/memory.cpp" "$HERE/src/modules.cpp" \
  "$HERE/src/fiber.cpp"
lib cudart libcudart.so.13 "$OBJ/cudart.syms" 801 yes "$HERE/src/cudart.cpp"
lib cublas libcublas.so.13 "$OBJ/cublas.syms" 15 no
lib cublasLt libcublasLt.so.13 "$OBJ/cublasLt.syms" 15 yes "$HERE/src/cublaslt.cpp"
lib nccl libnccl.so.2 "$OBJ/nccl.syms" 5 yes "$HERE/src/nccl.cpp"

# our kernels, compiled for the CPU: one translation unit with the generated kernel table
"$HERE/tools/gen_kernel_table.sh" "$OBJ/kernel_table.cpp" "$KDIR"/*.cu
"${CXX[@]}" -x c++ -include "$HERE/include/cuda_emu.h" -I "$KDIR" -shared -o "$OUT/libsparkatron_kernels_emu.so" \
  "$OBJ/kernel_table.cpp" -L"$OUT" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN'

# the emulation's self-test: planted bugs must be reported, in both thread orders
"$HERE/tools/gen_kernel_table.sh" "$OBJ/selftest_table.cpp" "$HERE/tests/selftest_kernels.cu"
"${CXX[@]}" -x c++ -include "$HERE/include/cuda_emu.h" -shared -o "$OBJ/libselftest_kernels.so" "$OBJ/selftest_table.cpp" \
  -L"$OUT" -l:libcuda.so.1 -Wl,-rpath,"$OUT"
"${CXX[@]}" -o "$OBJ/selftest" "$HERE/tests/selftest.cpp" -L"$OUT" -l:libcuda.so.1 -Wl,-rpath,"$OUT" -lpthread
for order in forward reverse; do
  SPARKATRON_CUDA_EMU_DEVICES=3 SPARKATRON_CUDA_EMU_ORDER=$order SPARKATRON_CUDA_EMU_KERNELS="$OBJ/libselftest_kernels.so" \
    "$OBJ/selftest" $order 2> "$OBJ/selftest-$order.err" || { cat "$OBJ/selftest-$order.err"; echo "cuda-emulation: self-test failed"; exit 1; }
done
touch "$STAMP"
echo "cuda-emulation: built $(ls "$OUT" | grep -c '\.so') libraries"
