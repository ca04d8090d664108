#!/usr/bin/env bash
# Prepares, on a CPU machine with the project's build tools, what ./sparkatron gpu-check needs on a GPU
# machine that has no JDK, no Maven and no network: build-out/gpu-check/ with
#   jre/      a jlink'd Java 17 runtime (the modules the engine and the tests use)
#   lib/      the jars the CUDA tests need, slimmed to the native libraries they load
#   classes/  gpu-runtime's classes (with the fatbin built here) and test classes
# packed as build-out/gpu-check.tar.xz, the one path to carry: the device tool carries at most 64 MiB, which
# the unpacked runtime and OpenBLAS's native library alone pass (checked at the end).
#   tools/gpu/prepare.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/build-out/gpu-check"
cd "$ROOT"
bash gpu-runtime/src/main/cuda/install-nvcc.sh
echo "gpu-check prepare: building gpu-runtime (tests compiled, not run) ..."
mvn -B -ntp -q -pl gpu-runtime test-compile dependency:build-classpath -Dmdep.includeScope=test \
    -Dmdep.outputFile="$ROOT/build-out/gpu-runtime-test-cp.txt"
mvn -B -ntp -q dependency:copy -Dartifact=org.junit.platform:junit-platform-console-standalone:1.14.1 \
    -DoutputDirectory="$ROOT/build-out/junit" >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT/lib" "$OUT/classes"
cp -r gpu-runtime/target/classes "$OUT/classes/main"
cp -r gpu-runtime/target/test-classes "$OUT/classes/test"
cp build-out/junit/junit-platform-console-standalone-1.14.1.jar "$OUT/lib/"
slim() { # slim JAR KEEP_REGEX: a copy of JAR keeping classes and only the native libraries matching KEEP_REGEX
  local jar="$1" keep="$2" tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && unzip -q "$jar" && find . -name '*.so*' | grep -Ev "$keep" | xargs -r rm -f && zip -q -r "$OUT/lib/$(basename "$jar")" .)
  rm -rf "$tmp"
}
tr ':' '\n' < build-out/gpu-runtime-test-cp.txt | while read -r jar; do
  case "$(basename "$jar")" in
    jcuda-natives-*) slim "$jar" 'libJCudaDriver' ;;
    cuda-*-linux-x86_64.jar) slim "$jar" 'libjnicudart|libjnicublas|libjninccl' ;;
    openblas-*-linux-x86_64.jar) slim "$jar" 'libjniopenblas|libopenblas' ;;
    junit-*|opentest4j-*|apiguardian-*) ;;  # inside the console launcher
    *) cp "$jar" "$OUT/lib/" ;;
  esac
done
if [ ! -x "$OUT/jre/bin/java" ]; then
  jlink --add-modules java.base,java.logging,java.management,jdk.management,java.naming,java.xml,jdk.unsupported,jdk.incubator.vector,java.sql \
        --strip-java-debug-attributes --strip-native-debug-symbols=exclude-debuginfo-files --no-man-pages --no-header-files \
        --compress=2 --output "$OUT/jre"
fi
tar -C "$ROOT/build-out" -cJf "$ROOT/build-out/gpu-check.tar.xz" gpu-check
SIZE=$(du -m "$ROOT/build-out/gpu-check.tar.xz" | cut -f1)
echo "gpu-check prepare: build-out/gpu-check.tar.xz is ${SIZE} MiB ($(du -sm "$OUT" | cut -f1) MiB unpacked); carry that file"
if [ "$SIZE" -gt 63 ]; then
  echo "gpu-check prepare: over the 64 MiB carry limit" >&2
  exit 1
fi
