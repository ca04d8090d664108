"""A SparkSession set up for Sparkatron: its jars, the JVM options its kernels need, quiet logs."""
import os

from sparkatron._jars import jars

#: The Vector API module Sparkatron's SIMD kernels use (an incubator module on Java 17).
JAVA_OPTIONS = "--add-modules=jdk.incubator.vector"


def configure(builder, local=True):
    """Adds Sparkatron's jars and JVM options to a ``SparkSession.Builder`` (returned for chaining).

    ``local``: also bind the driver to the loopback address (right for ``local[N]`` masters). It sets
    ``spark.jars`` and the driver and executor Java options: to add your own values for those keys, append
    them to these (``sparkatron.jars()``, ``sparkatron.JAVA_OPTIONS``) rather than replacing them.
    """
    builder = builder.config("spark.jars", ",".join(jars()))
    builder = builder.config("spark.driver.extraJavaOptions", JAVA_OPTIONS)
    builder = builder.config("spark.executor.extraJavaOptions", JAVA_OPTIONS)
    if local:
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    return builder


def spark_session(master="local[2]", app_name="sparkatron", conf=None, log_level="WARN"):
    """``SparkSession.builder`` with Sparkatron's jars and options, ``getOrCreate()``, logs at ``log_level``.

    The JVM starts here (a few seconds). With an existing session in this process, Spark returns it and
    the jars must already be on it. ``conf``: further settings, e.g. ``{"spark.ui.enabled": "false"}``.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    builder = configure(builder, local=master.startswith("local"))
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    os.environ.setdefault("PYSPARK_PYTHON", __import__("sys").executable)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(log_level)
    return spark
