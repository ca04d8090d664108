"""Lets pyspark's ``PipelineModel.load`` find :class:`sparkatron.TokenizeTransformer` under its Java class name."""
from sparkatron.ml import TokenizeTransformer  # noqa: F401
