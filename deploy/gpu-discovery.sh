#!/usr/bin/env bash
# Spark GPU discovery script (spark.worker.resource.gpu.discoveryScript /
# spark.executor.resource.gpu.discoveryScript): prints this host's GPU indices in Spark's format,
#   {"name":"gpu","addresses":["0","1",...]}
# Each Sparkatron barrier task then gets one address in TaskContext.resources() and binds it.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo '{"name":"gpu","addresses":[]}'
  exit 0
fi
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/ //g' -e 's/.*/"&"/' | paste -sd, -)
echo "{\"name\":\"gpu\",\"addresses\":[${ids}]}"
