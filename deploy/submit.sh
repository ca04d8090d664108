#!/usr/bin/env bash
# Submits a Sparkatron training job with spark-submit and the assembly jar (built once with mvn package).
#
#   deploy/submit.sh MASTER job.json [--key value ...]
#
# MASTER: spark://host:7077, yarn, k8s://..., local[N]. The jar holds Sparkatron and its dependencies; Spark,
# Scala and Hadoop come from the cluster. Where executors have GPUs (GPUS_PER_EXECUTOR > 0) the training
# stage asks for one GPU per task itself (stage-level scheduling); other stages need no GPU setting.
# Environment: SPARK_SUBMIT (default spark-submit), EXECUTORS, CORES_PER_EXECUTOR, GPUS_PER_EXECUTOR,
# EXECUTOR_MEMORY, EXTRA_CONF (more --conf arguments).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
MASTER="$1"; CONFIG="$2"; shift 2

VERSION=0.1.0-SNAPSHOT
JAR="$ROOT/assembly/target/sparkatron-spark4_2.13-$VERSION.jar"
if [ ! -f "$JAR" ] || [ -n "$(find "$ROOT" -path "$ROOT/build-out" -prune -o \( -name '*.java' -o -name 'pom.xml' \) -newer "$JAR" -print -quit)" ]; then
  (cd "$ROOT" && mvn -q -B -DskipTests package -pl assembly -am)
fi

GPUS="${GPUS_PER_EXECUTOR:-0}"
GPU_CONF=()
if [ "$GPUS" -gt 0 ]; then
  GPU_CONF=(--conf "spark.executor.resource.gpu.amount=$GPUS"
            --conf "spark.executor.resource.gpu.discoveryScript=$ROOT/deploy/gpu-discovery.sh")
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
  "$JAR" --config "$CONFIG" "$@"
