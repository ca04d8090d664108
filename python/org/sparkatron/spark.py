"""Lets pyspark's ``PipelineModel.load`` find the Python wrappers: it imports the Java class name of each
stage (``org.sparkatron.spark.SparkatronModel``) as a Python module path. Use :mod:`sparkatron` instead."""
from sparkatron.ml import SparkatronEstimator, SparkatronModel  # noqa: F401
