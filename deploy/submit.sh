#!/usr/bin/env bash
# Submits a Sparkatron training job with spark-submit.
#
#   deploy/submit.sh MASTER job.json [--key value ...]
#
# MASTER: spark://host:7077, yarn, k8s://..., local[N]. Builds the project once (mvn package) and ships
# Sparkatron's own jars and its runtime dependencies with --jars; Spark itself comes from the cluster.
# One task per GPU where executors have GPUs (GPUS_PER_EXECUTOR > 0), else one task per core.
# Environment: SPARK_SUBMIT (default spark-submit), EXECUTORS, CORES_PER_EXECUTOR, GPUS_PER_EXECUTOR,
# EXECUTOR_MEMORY, EXTRA_CONF (more --conf arguments).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
MASTER="$1"; CONFIG="$2"; shift 2

OUT="$ROOT/build-out/submit"
mkdir -p "$OUT"
if [ ! -f "$OUT/deps.txt" ] || [ -n "$(find "$ROOT" -path "$ROOT/build-out" -prune -o -name '*.java' -newer "$OUT/deps.txt" -print -quit)" ]; then
  (cd "$ROOT" && mvn -q -B -DskipTests package dependency:build-classpath -Dmdep.includeScope=runtime \
      -Dmdep.outputFile="$OUT/deps.txt" -pl spark-plugin -am)
fi
VERSION=0.1.0-SNAPSHOT
APP="$ROOT/spark-plugin/target/spark-plugin-$VERSION.jar"
JARS="$ROOT/gpu-runtime/target/gpu-runtime-$VERSION.jar,$ROOT/data-loaders/target/data-loaders-$VERSION.jar"
JARS="$JARS,$(tr ':' ',' < "$OUT/deps.txt" | tr ',' '\n' | grep -v -E '/(gpu-runtime|data-loaders)/' | paste -sd, -)"

GPUS="${GPUS_PER_EXECUTOR:-0}"
GPU_CONF=()
if [ "$GPUS" -gt 0 ]; then
  GPU_CONF=(--conf "spark.executor.resource.gpu.amount=$GPUS" --conf spark.task.resource.gpu.amount=1
            --conf "spark.executor.resource.gpu.discoveryScript=$ROOT/deploy/gpu-discovery.sh"
            --files "$ROOT/deploy/gpu-discovery.sh")
fi
JAVA_OPTS="--add-modules=jdk.incubator.vector"
exec "${SPARK_SUBMIT:-spark-submit}" --master "$MASTER" --deploy-mode client \
  --class org.sparkatron.spark.TrainMain \
  --conf spark.dynamicAllocation.enabled=false \
  --conf spark.executor.cores="${CORES_PER_EXECUTOR:-1}" \
  --conf spark.executor.memory="${EXECUTOR_MEMORY:-4g}" \
  ${EXECUTORS:+--num-executors "$EXECUTORS"} \
  --conf spark.scheduler.minRegisteredResourcesRatio=1.0 \
  --conf "spark.driver.extraJavaOptions=$JAVA_OPTS" \
  --conf "spark.executor.extraJavaOptions=$JAVA_OPTS" \
  "${GPU_CONF[@]}" ${EXTRA_CONF:-} \
  --jars "$JARS" "$APP" --config "$CONFIG" "$@"
