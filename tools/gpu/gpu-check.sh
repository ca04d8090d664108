#!/usr/bin/env bash
# The one-call GPU check (./sparkatron gpu-check), for a machine with an NVIDIA GPU, CUDA 13 and PyTorch,
# using what tools/gpu/prepare.sh put in build-out/gpu-check (carried there with the working tree). In
# under 8 minutes it:
#   1. reports the machine (nvidia-smi, java, nvcc, torch, NCCL and cuBLAS libraries found);
#   2. builds the .cu kernels with this machine's nvcc (ptxas and the driver have the last word);
#   3. runs the CUDA test suite (JUnit tag "cuda": every kernel against the CPU kernels with per-dtype
#      tolerances, the 1-rank NCCL tests, the training-step tests) on the real GPU;
#   4. runs the GPT-2 124M benchmark: Sparkatron's CUDA device (bf16, then fp8 against it) beside PyTorch
#      eager and torch.compile on the same model, same machine, same call;
# and writes one report, $OUT/gpu-check.md (build-out/gpu-check-report/ when OUT is unset), with the logs.
# Every section has its own time limit, so one that hangs cannot take the others with it. The kernel rebuild
# and the two test sections run at the same time (they check correctness, not speed); the benchmarks run
# alone after them. Limits in seconds, from the environment: GPU_CHECK_TEST_S (each test section, 200),
# GPU_CHECK_BENCH_S (Sparkatron's benchmark, 200), GPU_CHECK_TORCH_S (each PyTorch run, 150); GPU_CHECK_TORCH_MODES
# ("eager compile") names the PyTorch peers to run.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
B="$ROOT/build-out/gpu-check"
REPORT_DIR="${OUT:-$ROOT/build-out/gpu-check-report}"
mkdir -p "$REPORT_DIR"
R="$REPORT_DIR/gpu-check.md"
START=$(date +%s)
TEST_S="${GPU_CHECK_TEST_S:-200}"; BENCH_S="${GPU_CHECK_BENCH_S:-200}"; TORCH_S="${GPU_CHECK_TORCH_S:-150}"
section() { echo; echo "## $1"; echo; } >> "$R"
note() { echo "$*" | tee -a "$R"; }
elapsed() { echo $(( $(date +%s) - START )); }

echo "# Sparkatron GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))" > "$R"
if [ ! -d "$B/classes" ] && [ -f "$ROOT/build-out/gpu-check.tar.xz" ]; then
  tar -C "$ROOT/build-out" -xJf "$ROOT/build-out/gpu-check.tar.xz"
fi
if [ ! -d "$B/classes" ]; then
  note "build-out/gpu-check is missing: run ./sparkatron gpu-check --prepare on the CPU machine and carry build-out/gpu-check.tar.xz."
  exit 2
fi

section "1. Machine"
JAVA="$(command -v java || true)"
[ -x "$B/jre/bin/java" ] && JAVA="$B/jre/bin/java"
PY="$(command -v python3 || true)"
for p in /opt/venv/bin/python3 "$HOME"/venv/bin/python3 /usr/local/bin/python3; do
  if [ -x "$p" ] && "$p" -c 'import torch' 2>/dev/null; then PY="$p"; break; fi
done
NV_LIBS="$("$PY" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    dirs = set()
    for root in nvidia.__path__:
        for lib in glob.glob(os.path.join(root, '**', 'lib*.so*'), recursive=True):
            dirs.add(os.path.dirname(lib))
    print(':'.join(sorted(dirs)))
except Exception:
    pass
EOF
)"
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
{
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -4
  echo "java: $JAVA ($("$JAVA" -version 2>&1 | head -1))"
  echo "nvcc: $NVCC ($("$NVCC" --version 2>&1 | grep -o 'release [0-9.]*'))"
  echo "python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1))"
  echo "NVIDIA libraries from the Python packages: ${NV_LIBS:-none found}"
  echo '```'
} >> "$R"

CP="$B/classes/main:$B/classes/test:$(ls "$B"/lib/*.jar | tr '\n' ':')"
# JCuda extracts its native library into java.io.tmpdir without a lock: each JVM that runs at the same time as
# another gets its own folder.
JOPTS=(--add-modules=jdk.incubator.vector -Xmx16g "-Dorg.bytedeco.javacpp.platform.linkpath=$NV_LIBS" "-Djava.io.tmpdir=$B/tmp")
mkdir -p "$B/tmp" "$B/tmp-engine"

# 2. runs beside the tests: it checks that this machine's nvcc and ptxas accept every kernel; the tests use
# the fatbin built on the CPU machine (the same nvcc 13.0), so their result does not depend on the build's timing.
mkdir -p "$B/rebuilt"
( timeout 120 env NVCC="$NVCC" bash "$ROOT/gpu-runtime/src/main/cuda/build-fatbin.sh" "$B/rebuilt" > "$REPORT_DIR/build.log" 2>&1
  echo $? > "$REPORT_DIR/build.rc" ) &
BUILD_PID=$!

# 3. the CUDA test suite (one JVM per class, so that a crash in native code, which takes its JVM with it,
# costs only that class's results) and 3b. the engine suites on the CUDA device, all side by side
# cuBLASLt logs its errors to the test logs (level 1; 2 and up add a line per GEMM)
export CUBLASLT_LOG_LEVEL="${CUBLASLT_LOG_LEVEL:-1}"
CUDA_CLASSES=$(cd "$B/classes/test" && grep -rl --include='*.class' 'org/junit/jupiter/api/Tag' . | xargs grep -l 'cuda' \
  | sed 's|^\./||; s|\.class$||; s|/|.|g' | grep -v '\$' | sort)
mkdir -p "$REPORT_DIR/tests"
TEST_PIDS=()
for c in $CUDA_CLASSES; do
  mkdir -p "$B/tmp-$c"
  timeout "$TEST_S" "$JAVA" "${JOPTS[@]}" "-Djava.io.tmpdir=$B/tmp-$c" -cp "$CP" org.junit.platform.console.ConsoleLauncher \
    --include-tag cuda --select-class "$c" --details=tree --disable-banner > "$REPORT_DIR/tests/$c.log" 2>&1 &
  TEST_PIDS+=($!)
done

timeout "$TEST_S" "$JAVA" "${JOPTS[@]}" "-Djava.io.tmpdir=$B/tmp-engine" -Dsparkatron.test.device=cuda -Dsparkatron.test.fp8.parity=true -cp "$CP" org.junit.platform.console.ConsoleLauncher \
  --select-class org.sparkatron.model.GoldenModelTest --select-class org.sparkatron.model.GoldenMoeTest --select-class org.sparkatron.model.MixedPrecisionModelTest \
  --select-class org.sparkatron.model.BadModelInputTest --select-class org.sparkatron.precision.LossScalingTest \
  --select-class org.sparkatron.precision.Fp8KernelsTest --select-class org.sparkatron.precision.Fp8RecipeTest \
  --select-class org.sparkatron.precision.Fp8TrainingTest \
  --details=tree --disable-banner --reports-dir="$REPORT_DIR/junit-engine" > "$REPORT_DIR/engine-tests.log" 2>&1 &
ENGINE_PID=$!
TESTS_RC=0
for pid in "${TEST_PIDS[@]}"; do wait "$pid" || TESTS_RC=1; done
wait "$ENGINE_PID"; ENGINE_RC=$?
section "3. CUDA test suite on the GPU"
{
  echo '```'
  for c in $CUDA_CLASSES; do
    f="$REPORT_DIR/tests/$c.log"
    ok=$(sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -oE '[0-9]+ tests successful' | grep -oE '[0-9]+'); failed=$(sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -oE '[0-9]+ tests failed' | grep -oE '[0-9]+')
    aborted=$(sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -oE '[0-9]+ tests aborted' | grep -oE '[0-9]+')
    echo "${c##*.}: ${ok:-?} passed, ${failed:-?} failed, ${aborted:-?} skipped$(grep -q 'A fatal error has been detected' "$f" && echo ', JVM CRASHED: '"$(grep -m1 -A0 'Problematic frame' -A1 "$f" | tail -1)")"
    sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -E '✘|CudaException|\[cublasLt\].*\[Error\]' | head -8
  done
  echo '```'
} >> "$R"
note "CUDA suite: exit status $TESTS_RC (logs: tests/<class>.log)"
section "3b. Engine suites on the CUDA device (golden models, mixed precision, loss scaling, fp8 kernels, recipes and 200-step parity)"
{ echo '```'; grep -E 'tests (successful|failed|aborted|skipped)|✘' "$REPORT_DIR/engine-tests.log" | head -30; echo '```'; } >> "$R"
note "engine suites: exit status $ENGINE_RC after $(elapsed) s (full log: engine-tests.log)"
section "2. Kernel build with this machine's nvcc (beside the tests)"
wait "$BUILD_PID"
if [ "$(cat "$REPORT_DIR/build.rc" 2>/dev/null)" = 0 ] && [ -f "$B/rebuilt/sparkatron_kernels.fatbin" ]; then
  note "kernel rebuild with this machine's nvcc: $(stat -c %s "$B/rebuilt/sparkatron_kernels.fatbin") bytes (sm_80, sm_90, compute_90)"
else
  note "kernel rebuild with this machine's nvcc FAILED (build.log):"
  { echo '```'; tail -30 "$REPORT_DIR/build.log"; echo '```'; } >> "$R"
fi
[ "$TESTS_RC" -eq 0 ] && TESTS_RC=$ENGINE_RC

section "4. GPT-2 124M benchmark (bf16, fp32 master weights, one GPU; then fp8 against bf16)"
MODEL=(12 768 12 1024 50304 16 10)
if [ -f "$B/classes/main/org/sparkatron/device/cuda/GpuBench.class" ]; then
  # bf16 then fp8 (Megatron's default recipe) in one process, same weights and batches: tokens/s ratio and loss difference
  timeout "$BENCH_S" "$JAVA" "${JOPTS[@]}" -cp "$CP" org.sparkatron.device.cuda.GpuBench "${MODEL[@]}" bf16,fp8 > "$REPORT_DIR/bench-sparkatron.log" 2>&1
  grep '^sparkatron-cuda' "$REPORT_DIR/bench-sparkatron.log" | while read -r line; do note "sparkatron: $line"; done
  grep -q 'tokens_per_s_ratio' "$REPORT_DIR/bench-sparkatron.log" || note "sparkatron: $(tail -1 "$REPORT_DIR/bench-sparkatron.log")"
else
  note "sparkatron: not run (GpuBench is not in this build: the model does not run on the CUDA device yet)"
fi
if [ -f "$B/classes/main/org/sparkatron/device/cuda/GpuBench.class" ]; then
  # where the step's time goes: TF32 GEMMs instead of fp32 (the GEMMs' share), and sequence 256 with batch 64 (the
  # same tokens with a quarter of the attention work per token: the attention's share)
  timeout "$BENCH_S" "$JAVA" "${JOPTS[@]}" -Dsparkatron.cuda.tf32=true -cp "$CP" org.sparkatron.device.cuda.GpuBench 12 768 12 1024 50304 16 6 bf16 \
    > "$REPORT_DIR/bench-sparkatron-tf32.log" 2>&1
  note "sparkatron, TF32 GEMMs: $(grep '^sparkatron-cuda' "$REPORT_DIR/bench-sparkatron-tf32.log" | cut -d'(' -f1)"
  timeout "$BENCH_S" "$JAVA" "${JOPTS[@]}" -cp "$CP" org.sparkatron.device.cuda.GpuBench 12 768 12 256 50304 64 6 bf16 \
    > "$REPORT_DIR/bench-sparkatron-t256.log" 2>&1
  note "sparkatron, sequence 256 x batch 64: $(grep '^sparkatron-cuda' "$REPORT_DIR/bench-sparkatron-t256.log" | cut -d'(' -f1)"
fi
for mode in ${GPU_CHECK_TORCH_MODES:-eager compile}; do
  timeout "$TORCH_S" "$PY" "$ROOT/gpu-runtime/src/bench/python/torch_gpt2_gpu.py" "${MODEL[@]}" "$mode" > "$REPORT_DIR/bench-torch-$mode.log" 2>&1
  note "pytorch $mode: $(tail -1 "$REPORT_DIR/bench-torch-$mode.log")"
done

section "Summary"
note "total $(elapsed) s; tests exit status $TESTS_RC"
cat "$R"
exit $TESTS_RC
