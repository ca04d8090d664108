"""Sparkatron for PySpark: Megatron-style transformer training as Spark ML stages.

    import sparkatron
    spark = sparkatron.spark_session()            # local[2], Sparkatron's jars found for you
    from sparkatron import TokenizeTransformer, SparkatronEstimator
"""
from sparkatron._jars import jars
from sparkatron.ml import SparkatronEstimator, SparkatronModel, TokenizeTransformer
from sparkatron.session import JAVA_OPTIONS, configure, spark_session

__version__ = "0.1.0"
__all__ = ["jars", "configure", "spark_session", "JAVA_OPTIONS", "SparkatronEstimator", "SparkatronModel",
           "TokenizeTransformer"]
