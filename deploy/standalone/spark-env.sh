# Sparkatron on a Spark standalone cluster: $SPARK_HOME/conf/spark-env.sh on every Worker host.
# Each Worker offers its GPUs to Spark; the discovery script prints their indices (nvidia-smi).
# Copy deploy/gpu-discovery.sh to the same path on every Worker.
SPARK_WORKER_OPTS="-Dspark.worker.resource.gpu.amount=8 -Dspark.worker.resource.gpu.discoveryScript=/opt/sparkatron/gpu-discovery.sh"
