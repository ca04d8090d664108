"""PySpark ML wrappers of Sparkatron's Java stages (``pyspark.ml.wrapper`` style).

Each class holds a Java object; its Params mirror the Java Params (same names, docs and defaults: the test
suite compares them) and go to the Java side on ``fit``/``transform``. Persistence is the Java side's:
``stage.save(path)``, ``Cls.load(path)``, and ``Pipeline``/``PipelineModel`` save and load as with Spark's own
stages (the ``org.sparkatron`` shim modules let ``PipelineModel.load`` find these classes).
"""
import json

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import JavaMLReadable, JavaMLReader, JavaMLWritable
from pyspark.ml.wrapper import JavaEstimator, JavaModel, JavaTransformer

_STR, _INT, _FLOAT, _BOOL = TypeConverters.toString, TypeConverters.toInt, TypeConverters.toFloat, TypeConverters.toBoolean

# (name, converter, doc): the docs are the Java Params' docs, word for word
ESTIMATOR_PARAMS = [
    ("modelConfig", _STR, "Hugging Face config.json (JSON text or a path)"),
    ("dp", _INT, "data-parallel replicas (ranks)"),
    ("tp", _INT, "tensor-parallel size (ranks per replica)"),
    ("pp", _INT, "pipeline-parallel size (stages of layers per replica)"),
    ("virtualPp", _INT, "model chunks per pipeline rank: the interleaved 1F1B schedule when > 1 (default 1)"),
    ("decoderFirstPipelineNumLayers", _INT, "layers on the first pipeline stage (default: an even split)"),
    ("decoderLastPipelineNumLayers", _INT, "layers on the last pipeline stage (default: an even split)"),
    ("recompute", _STR, "activation recomputation: none (default), selective (the attention core) or full (each layer)"),
    ("cp", _INT, "context-parallel size (ranks each sequence is split over; Megatron's context_parallel_size)"),
    ("cpCommType", _STR, "context-parallel attention: p2p (ring, default) or all_gather"),
    ("tensorParallel", _INT, "tensor-parallel size (ranks per replica; alias of tp)"),
    ("sequenceParallel", _BOOL, "sequence parallelism inside each tensor-parallel group"),
    ("ep", _INT, "expert-parallel size (MoE models: experts split over ep of the dp replicas)"),
    ("numExperts", _INT, "experts per MoE layer (overrides the mixtral config's num_local_experts)"),
    ("topK", _INT, "experts per token (overrides the mixtral config's num_experts_per_tok)"),
    ("moeCapacityFactor", _FLOAT, "expert capacity factor: tokens over capacity are dropped (overrides the mixtral config's moe_expert_capacity_factor)"),
    ("moeAuxLossCoeff", _FLOAT, "load-balancing loss coefficient (overrides the mixtral config's)"),
    ("moeZLossCoeff", _FLOAT, "router z-loss coefficient (overrides the mixtral config's)"),
    ("globalBatch", _INT, "samples per optimizer step over all replicas"),
    ("microBatch", _INT, "samples per forward/backward on one rank"),
    ("seqLen", _INT, "tokens per sample (inputs)"),
    ("steps", _INT, "optimizer steps"),
    ("lr", _FLOAT, "peak learning rate"),
    ("minLr", _FLOAT, "learning rate at the end of the cosine decay"),
    ("warmupSteps", _INT, "linear warm-up steps"),
    ("decaySteps", _INT, "step at which the cosine decay reaches minLr"),
    ("weightDecay", _FLOAT, "AdamW weight decay"),
    ("gradClip", _FLOAT, "global gradient-norm clip (0: none)"),
    ("seed", _INT, "seed of initialisation and data order"),
    ("inputCol", _STR, "array<int> column of token ids"),
    ("outputPath", _STR, "where the model and metrics are saved (any Hadoop path)"),
    ("dropBadRows", _BOOL, "drop null/empty/out-of-vocabulary rows instead of refusing"),
    ("initFrom", _STR, "Hugging Face model directory (any Hadoop path) to start from instead of the seed"),
    ("commTimeoutS", _INT, "communicator per-operation timeout in seconds: a stuck peer fails the stage after this (default 300)"),
    ("bucketMb", _FLOAT, "gradient bucket size in MiB of fp32 gradients (default: Megatron's, max(40M, 1M x dp) elements)"),
    ("useDistributedOptimizer", _BOOL, "ZeRO-1: shard the fp32 master weights and AdamW moments over the data-parallel replicas (default false)"),
    ("overlapGradReduce", _BOOL, "reduce each gradient bucket while the backward continues (default true)"),
    ("overlapParamGather", _BOOL, "with useDistributedOptimizer: all-gather the updated parameters during the next forward, each bucket awaited before the first layer that reads it (default false)"),
    ("threadsPerRank", _INT, "threads each rank's CPU kernels and GEMMs use; process-wide, keep 1 with several ranks per JVM; a bitwise resume needs the same value (default 1)"),
    ("checkpointDir", _STR, "root of sharded checkpoints on any Hadoop path; a retried stage or a new job resumes from the newest (default: none)"),
    ("checkpointEvery", _INT, "steps between checkpoints (0: only at the end)"),
    ("keepCheckpoints", _INT, "how many checkpoints to keep, newest first (default 2)"),
    ("startOver", _BOOL, "delete existing checkpoints instead of resuming from them (first attempt only)"),
    ("asyncSave", _BOOL, "save checkpoints in the background while training goes on (Megatron's --async-save; default false)"),
    ("precision", _STR, "fp32, bf16, fp16 or fp8 (docs/precision.md)"),
    ("tokenizer", _STR, "gpt2 or a tokenizer.json path, saved with the model (default: from the input column's TokenizeTransformer metadata)"),
    ("fp8Format", _STR, "fp8: e4m3, or hybrid (E4M3 forward, E5M2 gradients; the default)"),
    ("fp8Recipe", _STR, "fp8 scaling: delayed (the default) or tensorwise (current scaling)"),
    ("fp8Margin", _INT, "fp8 delayed scaling: scale = fp8 max / amax / 2^margin"),
    ("fp8AmaxHistoryLen", _INT, "fp8 delayed scaling: passes of amax history"),
    ("fp8AmaxComputeAlgo", _STR, "fp8 delayed scaling: most_recent or max over the history"),
    ("firstLastLayersBf16", _BOOL, "fp8: keep the first and last layers' GEMMs in bf16"),
    ("numLayersAtStartInBf16", _INT, "with firstLastLayersBf16: layers at the start in bf16"),
    ("numLayersAtEndInBf16", _INT, "with firstLastLayersBf16: layers at the end in bf16"),
    ("dataSplit", _STR, "train,validation,test weights over the documents in row order (Megatron's --split)"),
    ("logInterval", _INT, "steps per progress line (interval averages)"),
    ("evalInterval", _INT, "steps between evaluations on the validation split"),
    ("evalIters", _INT, "global batches per evaluation"),
    ("tensorboardDir", _STR, "TensorBoard log directory (any Hadoop path)"),
    ("mlflowTrackingUri", _STR, "MLflow tracking server (http(s)://)"),
    ("mlflowExperiment", _STR, "MLflow experiment name"),
    ("mlflowRunName", _STR, "MLflow run name"),
]

MODEL_PARAMS = [
    ("inputCol", _STR, "array<int> column to score"),
    ("lossCol", _STR, "output column: mean cross-entropy (nats)"),
    ("perplexityCol", _STR, "output column: perplexity"),
    ("promptCol", _STR, "array<int> column of prompts to continue (optional)"),
    ("generatedCol", _STR, "output column: generated token ids"),
    ("maxNewTokens", _INT, "tokens to generate per prompt (at most)"),
    ("tokenizer", _STR, "gpt2, or a path to a tokenizer.json: prompts may be text and generatedTextCol is added (optional)"),
    ("generatedTextCol", _STR, "output column: the generated text (needs tokenizer)"),
    ("temperature", _FLOAT, "sampling temperature (0: greedy)"),
    ("topK", _INT, "sample from the k most likely tokens (0: all)"),
    ("topP", _FLOAT, "sample from the smallest set of tokens whose probability reaches p (1: all)"),
    ("sampleSeed", _INT, "sampling seed, combined with each prompt so a row's text does not depend on partitioning"),
]

TOKENIZE_PARAMS = [
    ("inputCol", _STR, "text column to tokenize"),
    ("outputCol", _STR, "array<int> column of token ids"),
    ("tokenizer", _STR, "gpt2, or a path to a Hugging Face tokenizer.json"),
    ("appendEod", _BOOL, "append the end-of-document token to every document"),
]


def _with_params(specs):
    """Class decorator: a Param, a getter and a setter per spec (``setDp``/``getDp``), as pyspark's own classes have."""

    def add(cls):
        for name, conv, doc in specs:
            setattr(cls, name, Param(Params._dummy(), name, doc, typeConverter=conv))
            cap = name[0].upper() + name[1:]

            def setter(self, value, _name=name):
                return self._set(**{_name: value})

            def getter(self, _name=name):
                return self.getOrDefault(_name)

            setter.__doc__ = "Sets %s: %s" % (name, doc)
            getter.__doc__ = "Gets %s: %s" % (name, doc)
            setattr(cls, "set" + cap, setter)
            setattr(cls, "get" + cap, getter)
        cls.__doc__ = (cls.__doc__ or "") + "\n    Params:\n" + "".join(
            "\n    - ``%s``: %s" % (n, d) for n, _, d in specs)
        return cls

    return add


class _Reader(JavaMLReader):
    @classmethod
    def _java_loader_class(cls, clazz):
        return clazz._java_class


class _Persistent(JavaMLReadable, JavaMLWritable):
    @classmethod
    def read(cls):
        return _Reader(cls)


def _init_java(self, kwargs):
    """Creates the Java object, takes its defaults, then sets the given Params."""
    self._java_obj = self._new_java_obj(self._java_class, self.uid)
    self._transfer_params_from_java()
    self._set(**{k: v for k, v in kwargs.items() if v is not None})


@_with_params(TOKENIZE_PARAMS)
class TokenizeTransformer(JavaTransformer, _Persistent):
    """A string column in, an ``array<int>`` column of token ids out (``org.sparkatron.data.spark.TokenizeTransformer``).

    ``TokenizeTransformer(inputCol="text", outputCol="tokens", tokenizer="gpt2")``; the output column's
    metadata names the tokenizer, so a :class:`SparkatronEstimator` fitted on it saves it with the model.
    """

    _java_class = "org.sparkatron.data.spark.TokenizeTransformer"

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        _init_java(self, self._input_kwargs)


@_with_params(ESTIMATOR_PARAMS)
class SparkatronEstimator(JavaEstimator, _Persistent):
    """Trains a transformer language model on an ``array<int>`` column (``org.sparkatron.spark.SparkatronEstimator``).

    ``fit(df)`` runs one Spark barrier stage of ``dp x tp`` ranks and returns a :class:`SparkatronModel`.
    Every training-config key is a Param (camel case: ``globalBatch`` is ``global_batch``), except the
    command-line-only input keys and the failure-test keys. Blocks until training ends.
    """

    _java_class = "org.sparkatron.spark.SparkatronEstimator"

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        _init_java(self, self._input_kwargs)

    def _create_model(self, java_model):
        return SparkatronModel(java_model)


@_with_params(MODEL_PARAMS)
class SparkatronModel(JavaModel, _Persistent):
    """A trained model as a Transformer (``org.sparkatron.spark.SparkatronModel``): adds ``loss`` and
    ``perplexity`` per row and, with ``promptCol``, the continuation of each prompt (``generated``; with a
    tokenizer also ``generatedText``). ``SparkatronModel.load(path)`` also reads a Hugging Face model directory.
    """

    _java_class = "org.sparkatron.spark.SparkatronModel"

    def __init__(self, java_model=None):
        super().__init__(java_model)
        if java_model is not None:
            self._transfer_params_from_java()

    def trainingMetrics(self):
        """The per-step metrics of the fit that made this model (dicts with step, loss, lr, ...); [] once loaded."""
        return [json.loads(line) for line in self._java_obj.trainingMetrics()]
