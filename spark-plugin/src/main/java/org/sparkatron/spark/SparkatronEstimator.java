package org.sparkatron.spark;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.PrintStream;
import org.apache.spark.ml.Estimator;
import org.apache.spark.ml.param.BooleanParam;
import org.apache.spark.ml.param.DoubleParam;
import org.apache.spark.ml.param.IntParam;
import org.apache.spark.ml.param.LongParam;
import org.apache.spark.ml.param.Param;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.ml.util.DefaultParamsReadable;
import org.apache.spark.ml.util.DefaultParamsWritable;
import org.apache.spark.ml.util.Identifiable$;
import org.apache.spark.ml.util.MLReader;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.types.StructType;

/**
 * Spark ML Estimator: {@code fit(df)} trains a transformer language model on the token column of
 * {@code df} with data parallelism over a barrier stage ({@link DistributedTraining}) and returns a
 * {@link SparkatronModel}. Every Param maps to the {@link TrainConfig} key of the same name in snake case
 * ({@code globalBatch} -&gt; {@code global_batch}); {@code modelConfig} is a Hugging Face config.json text
 * or a path to one. Progress lines go to {@code System.out} (the notebook's output) unless
 * {@link #setProgress(PrintStream)} says otherwise.
 *
 * <pre>{@code
 * SparkatronModel m = new SparkatronEstimator().setModelConfig(json).setDp(2).setGlobalBatch(16)
 *     .setSteps(200).setLr(3e-3).setInputCol("tokens").setOutputPath("/tmp/run").fit(df);
 * }</pre>
 * Every {@link TrainConfig} key is a Param except those in {@link #NOT_PARAMS}, each with the reason.
 * When {@code tokenizer} is not set and the input column came from a {@code TokenizeTransformer}, the
 * column's metadata names the tokenizer; it is saved with the model ({@code outputPath}) and set on the
 * returned {@link SparkatronModel}, so text goes in and comes out of it.
 *
 * <p>Persistence: Spark ML's {@code DefaultParamsWritable}/{@code DefaultParamsReadable}
 * ({@code path/metadata}, as Spark's own stages), so an unfitted {@code Pipeline} saves and loads.
 * Blocking; one fit at a time per instance.
 */
public final class SparkatronEstimator extends Estimator<SparkatronModel> implements DefaultParamsWritable {
    /** The training-config keys that are not Params, and why. */
    public static final java.util.Map<String, String> NOT_PARAMS = java.util.Map.ofEntries(
            java.util.Map.entry("input", "command line only: fit() takes the DataFrame itself"),
            java.util.Map.entry("input_format", "command line only: fit() takes the DataFrame itself"),
            java.util.Map.entry("input_schema", "command line only: fit() takes the DataFrame itself"),
            java.util.Map.entry("fail_rank", "fault injection for the failure tests"),
            java.util.Map.entry("fail_step", "fault injection for the failure tests"),
            java.util.Map.entry("fail_attempts", "fault injection for the failure tests"),
            java.util.Map.entry("fail_mode", "fault injection for the failure tests"),
            java.util.Map.entry("check_token_ids", "command line only: Megatron input (input_format megatron), which fit() does not read"),
            java.util.Map.entry("override_lr_schedule", "a resume decision for one job on the command line, not a property of the Estimator"),
            java.util.Map.entry("use_checkpoint_lr_schedule", "a resume decision for one job on the command line, not a property of the Estimator"),
            java.util.Map.entry("num_layers_per_virtual_pipeline_stage", "Megatron's other way of saying virtualPp, which is the Param"),
            java.util.Map.entry("recompute_granularity", "Megatron's name of recompute, which is the Param"),
            java.util.Map.entry("context_parallel_size", "Megatron's name of cp, which is the Param"),
            java.util.Map.entry("expert_parallel", "Megatron's name of ep, which is the Param"));
    private static final long serialVersionUID = 1L;
    private final String uid;
    private transient PrintStream progress = System.out;
    private transient DistributedTraining.Result lastResult;

    private final Param<String> modelConfig;
    private final IntParam dp;
    private final IntParam tp;
    private final IntParam pp;
    private final IntParam cp;
    private final Param<String> cpCommType;
    private final IntParam tensorParallel;
    private final BooleanParam sequenceParallel;
    private final IntParam virtualPp;
    private final IntParam decoderFirstPipelineNumLayers;
    private final IntParam decoderLastPipelineNumLayers;
    private final Param<String> recompute;
    private final IntParam ep;
    private final IntParam numExperts;
    private final IntParam topK;
    private final DoubleParam moeCapacityFactor;
    private final DoubleParam moeAuxLossCoeff;
    private final DoubleParam moeZLossCoeff;
    private final IntParam globalBatch;
    private final IntParam microBatch;
    private final IntParam seqLen;
    private final IntParam steps;
    private final DoubleParam lr;
    private final DoubleParam minLr;
    private final IntParam warmupSteps;
    private final IntParam decaySteps;
    private final DoubleParam weightDecay;
    private final DoubleParam gradClip;
    private final LongParam seed;
    private final Param<String> inputCol;
    private final Param<String> outputPath;
    private final BooleanParam dropBadRows;
    private final Param<String> initFrom;
    private final IntParam commTimeoutS;
    private final DoubleParam bucketMb;
    private final BooleanParam useDistributedOptimizer;
    private final BooleanParam overlapGradReduce;
    private final BooleanParam overlapParamGather;
    private final IntParam threadsPerRank;
    private final Param<String> checkpointDir;
    private final IntParam checkpointEvery;
    private final IntParam keepCheckpoints;
    private final BooleanParam startOver;
    private final BooleanParam asyncSave;
    private final Param<String> precision;
    private final Param<String> tokenizer;
    private final Param<String> fp8Format;
    private final Param<String> fp8Recipe;
    private final IntParam fp8Margin;
    private final IntParam fp8AmaxHistoryLen;
    private final Param<String> fp8AmaxComputeAlgo;
    private final BooleanParam firstLastLayersBf16;
    private final IntParam numLayersAtStartInBf16;
    private final IntParam numLayersAtEndInBf16;
    // seeing training (docs/monitoring.md)
    private final Param<String> dataSplit;
    private final IntParam logInterval;
    private final IntParam evalInterval;
    private final IntParam evalIters;
    private final Param<String> tensorboardDir;
    private final Param<String> mlflowTrackingUri;
    private final Param<String> mlflowExperiment;
    private final Param<String> mlflowRunName;

    public SparkatronEstimator() {
        this(Identifiable$.MODULE$.randomUID("sparkatron"));
    }

    public SparkatronEstimator(String uid) {
        this.uid = uid;
        // created after uid is set: a Param records its parent's uid
        modelConfig = new Param<>(this, "modelConfig", "Hugging Face config.json (JSON text or a path)");
        dp = new IntParam(this, "dp", "data-parallel replicas (ranks)");
        tp = new IntParam(this, "tp", "tensor-parallel size (ranks per replica)");
        pp = new IntParam(this, "pp", "pipeline-parallel size (stages of layers per replica)");
        virtualPp = new IntParam(this, "virtualPp", "model chunks per pipeline rank: the interleaved 1F1B schedule when > 1 (default 1)");
        decoderFirstPipelineNumLayers = new IntParam(this, "decoderFirstPipelineNumLayers", "layers on the first pipeline stage (default: an even split)");
        decoderLastPipelineNumLayers = new IntParam(this, "decoderLastPipelineNumLayers", "layers on the last pipeline stage (default: an even split)");
        recompute = new Param<>(this, "recompute", "activation recomputation: none (default), selective (the attention core) or full (each layer)");
        cp = new IntParam(this, "cp", "context-parallel size (ranks each sequence is split over; Megatron's context_parallel_size)");
        cpCommType = new Param<>(this, "cpCommType", "context-parallel attention: p2p (ring, default) or all_gather");
        tensorParallel = new IntParam(this, "tensorParallel", "tensor-parallel size (ranks per replica; alias of tp)");
        sequenceParallel = new BooleanParam(this, "sequenceParallel", "sequence parallelism inside each tensor-parallel group");
        ep = new IntParam(this, "ep", "expert-parallel size (MoE models: experts split over ep of the dp replicas)");
        numExperts = new IntParam(this, "numExperts", "experts per MoE layer (overrides the mixtral config's num_local_experts)");
        topK = new IntParam(this, "topK", "experts per token (overrides the mixtral config's num_experts_per_tok)");
        moeCapacityFactor = new DoubleParam(this, "moeCapacityFactor",
                "expert capacity factor: tokens over capacity are dropped (overrides the mixtral config's moe_expert_capacity_factor)");
        moeAuxLossCoeff = new DoubleParam(this, "moeAuxLossCoeff", "load-balancing loss coefficient (overrides the mixtral config's)");
        moeZLossCoeff = new DoubleParam(this, "moeZLossCoeff", "router z-loss coefficient (overrides the mixtral config's)");
        globalBatch = new IntParam(this, "globalBatch", "samples per optimizer step over all replicas");
        microBatch = new IntParam(this, "microBatch", "samples per forward/backward on one rank");
        seqLen = new IntParam(this, "seqLen", "tokens per sample (inputs)");
        steps = new IntParam(this, "steps", "optimizer steps");
        lr = new DoubleParam(this, "lr", "peak learning rate");
        minLr = new DoubleParam(this, "minLr", "learning rate at the end of the cosine decay");
        warmupSteps = new IntParam(this, "warmupSteps", "linear warm-up steps");
        decaySteps = new IntParam(this, "decaySteps", "step at which the cosine decay reaches minLr");
        weightDecay = new DoubleParam(this, "weightDecay", "AdamW weight decay");
        gradClip = new DoubleParam(this, "gradClip", "global gradient-norm clip (0: none)");
        seed = new LongParam(this, "seed", "seed of initialisation and data order");
        inputCol = new Param<>(this, "inputCol", "array<int> column of token ids");
        outputPath = new Param<>(this, "outputPath", "where the model and metrics are saved (any Hadoop path)");
        dropBadRows = new BooleanParam(this, "dropBadRows", "drop null/empty/out-of-vocabulary rows instead of refusing");
        initFrom = new Param<>(this, "initFrom", "Hugging Face model directory (any Hadoop path) to start from instead of the seed");
        commTimeoutS = new IntParam(this, "commTimeoutS", "communicator per-operation timeout in seconds: a stuck peer fails the stage after this (default 300)");
        bucketMb = new DoubleParam(this, "bucketMb", "gradient bucket size in MiB of fp32 gradients (default: Megatron's, max(40M, 1M x dp) elements)");
        useDistributedOptimizer = new BooleanParam(this, "useDistributedOptimizer", "ZeRO-1: shard the fp32 master weights and AdamW moments over the data-parallel replicas (default false)");
        overlapGradReduce = new BooleanParam(this, "overlapGradReduce", "reduce each gradient bucket while the backward continues (default true)");
        overlapParamGather = new BooleanParam(this, "overlapParamGather", "with useDistributedOptimizer: all-gather the updated parameters during the next forward, each bucket awaited before the first layer that reads it (default false)");
        threadsPerRank = new IntParam(this, "threadsPerRank", "threads each rank's CPU kernels and GEMMs use; process-wide, keep 1 with several ranks per JVM; a bitwise resume needs the same value (default 1)");
        checkpointDir = new Param<>(this, "checkpointDir", "root of sharded checkpoints on any Hadoop path; a retried stage or a new job resumes from the newest (default: none)");
        checkpointEvery = new IntParam(this, "checkpointEvery", "steps between checkpoints (0: only at the end)");
        keepCheckpoints = new IntParam(this, "keepCheckpoints", "how many checkpoints to keep, newest first (default 2)");
        startOver = new BooleanParam(this, "startOver", "delete existing checkpoints instead of resuming from them (first attempt only)");
        asyncSave = new BooleanParam(this, "asyncSave", "save checkpoints in the background while training goes on (Megatron's --async-save; default false)");
        precision = new Param<>(this, "precision", "fp32, bf16, fp16 or fp8 (docs/precision.md)");
        tokenizer = new Param<>(this, "tokenizer", "gpt2 or a tokenizer.json path, saved with the model (default: from the input column's TokenizeTransformer metadata)");
        fp8Format = new Param<>(this, "fp8Format", "fp8: e4m3, or hybrid (E4M3 forward, E5M2 gradients; the default)");
        fp8Recipe = new Param<>(this, "fp8Recipe", "fp8 scaling: delayed (the default) or tensorwise (current scaling)");
        fp8Margin = new IntParam(this, "fp8Margin", "fp8 delayed scaling: scale = fp8 max / amax / 2^margin");
        fp8AmaxHistoryLen = new IntParam(this, "fp8AmaxHistoryLen", "fp8 delayed scaling: passes of amax history");
        fp8AmaxComputeAlgo = new Param<>(this, "fp8AmaxComputeAlgo", "fp8 delayed scaling: most_recent or max over the history");
        firstLastLayersBf16 = new BooleanParam(this, "firstLastLayersBf16", "fp8: keep the first and last layers' GEMMs in bf16");
        numLayersAtStartInBf16 = new IntParam(this, "numLayersAtStartInBf16", "with firstLastLayersBf16: layers at the start in bf16");
        numLayersAtEndInBf16 = new IntParam(this, "numLayersAtEndInBf16", "with firstLastLayersBf16: layers at the end in bf16");
        dataSplit = new Param<>(this, "dataSplit", "train,validation,test weights over the documents in row order (Megatron's --split)");
        logInterval = new IntParam(this, "logInterval", "steps per progress line (interval averages)");
        evalInterval = new IntParam(this, "evalInterval", "steps between evaluations on the validation split");
        evalIters = new IntParam(this, "evalIters", "global batches per evaluation");
        tensorboardDir = new Param<>(this, "tensorboardDir", "TensorBoard log directory (any Hadoop path)");
        mlflowTrackingUri = new Param<>(this, "mlflowTrackingUri", "MLflow tracking server (http(s)://)");
        mlflowExperiment = new Param<>(this, "mlflowExperiment", "MLflow experiment name");
        mlflowRunName = new Param<>(this, "mlflowRunName", "MLflow run name");
        setDefault(inputCol, "tokens");
    }

    @Override
    public String uid() {
        return uid;
    }

    public Param<String> modelConfig() { return modelConfig; }
    public IntParam dp() { return dp; }
    public IntParam tp() { return tp; }
    public IntParam pp() { return pp; }
    public IntParam virtualPp() { return virtualPp; }
    public IntParam decoderFirstPipelineNumLayers() { return decoderFirstPipelineNumLayers; }
    public IntParam decoderLastPipelineNumLayers() { return decoderLastPipelineNumLayers; }
    public Param<String> recompute() { return recompute; }
    public IntParam cp() { return cp; }
    public Param<String> cpCommType() { return cpCommType; }
    public IntParam tensorParallel() { return tensorParallel; }
    public BooleanParam sequenceParallel() { return sequenceParallel; }
    public IntParam ep() { return ep; }
    public IntParam numExperts() { return numExperts; }
    public IntParam topK() { return topK; }
    public DoubleParam moeCapacityFactor() { return moeCapacityFactor; }
    public DoubleParam moeAuxLossCoeff() { return moeAuxLossCoeff; }
    public DoubleParam moeZLossCoeff() { return moeZLossCoeff; }
    public IntParam globalBatch() { return globalBatch; }
    public IntParam microBatch() { return microBatch; }
    public IntParam seqLen() { return seqLen; }
    public IntParam steps() { return steps; }
    public DoubleParam lr() { return lr; }
    public DoubleParam minLr() { return minLr; }
    public IntParam warmupSteps() { return warmupSteps; }
    public IntParam decaySteps() { return decaySteps; }
    public DoubleParam weightDecay() { return weightDecay; }
    public DoubleParam gradClip() { return gradClip; }
    public LongParam seed() { return seed; }
    public Param<String> inputCol() { return inputCol; }
    public Param<String> outputPath() { return outputPath; }
    public BooleanParam dropBadRows() { return dropBadRows; }
    public Param<String> initFrom() { return initFrom; }
    public IntParam commTimeoutS() { return commTimeoutS; }
    public DoubleParam bucketMb() { return bucketMb; }
    public BooleanParam useDistributedOptimizer() { return useDistributedOptimizer; }
    public BooleanParam overlapGradReduce() { return overlapGradReduce; }
    public BooleanParam overlapParamGather() { return overlapParamGather; }
    public IntParam threadsPerRank() { return threadsPerRank; }
    public Param<String> checkpointDir() { return checkpointDir; }
    public IntParam checkpointEvery() { return checkpointEvery; }
    public IntParam keepCheckpoints() { return keepCheckpoints; }
    public BooleanParam startOver() { return startOver; }
    public BooleanParam asyncSave() { return asyncSave; }
    public Param<String> precision() { return precision; }
    public Param<String> tokenizer() { return tokenizer; }
    public Param<String> fp8Format() { return fp8Format; }
    public Param<String> fp8Recipe() { return fp8Recipe; }
    public IntParam fp8Margin() { return fp8Margin; }
    public IntParam fp8AmaxHistoryLen() { return fp8AmaxHistoryLen; }
    public Param<String> fp8AmaxComputeAlgo() { return fp8AmaxComputeAlgo; }
    public BooleanParam firstLastLayersBf16() { return firstLastLayersBf16; }
    public IntParam numLayersAtStartInBf16() { return numLayersAtStartInBf16; }
    public IntParam numLayersAtEndInBf16() { return numLayersAtEndInBf16; }
    public Param<String> dataSplit() { return dataSplit; }
    public IntParam logInterval() { return logInterval; }
    public IntParam evalInterval() { return evalInterval; }
    public IntParam evalIters() { return evalIters; }
    public Param<String> tensorboardDir() { return tensorboardDir; }
    public Param<String> mlflowTrackingUri() { return mlflowTrackingUri; }
    public Param<String> mlflowExperiment() { return mlflowExperiment; }
    public Param<String> mlflowRunName() { return mlflowRunName; }

    public SparkatronEstimator setModelConfig(String v) { set(modelConfig, v); return this; }
    public SparkatronEstimator setDp(int v) { set(dp, (Object) v); return this; }
    public SparkatronEstimator setTp(int v) { set(tp, (Object) v); return this; }
    public SparkatronEstimator setPp(int v) { set(pp, (Object) v); return this; }
    public SparkatronEstimator setVirtualPp(int v) { set(virtualPp, (Object) v); return this; }
    public SparkatronEstimator setDecoderFirstPipelineNumLayers(int v) { set(decoderFirstPipelineNumLayers, (Object) v); return this; }
    public SparkatronEstimator setDecoderLastPipelineNumLayers(int v) { set(decoderLastPipelineNumLayers, (Object) v); return this; }
    public SparkatronEstimator setRecompute(String v) { set(recompute, v); return this; }
    public SparkatronEstimator setCp(int v) { set(cp, (Object) v); return this; }
    public SparkatronEstimator setCpCommType(String v) { set(cpCommType, v); return this; }
    public SparkatronEstimator setTensorParallel(int v) { set(tensorParallel, (Object) v); return this; }
    public SparkatronEstimator setSequenceParallel(boolean v) { set(sequenceParallel, (Object) v); return this; }
    public SparkatronEstimator setEp(int v) { set(ep, (Object) v); return this; }
    public SparkatronEstimator setNumExperts(int v) { set(numExperts, (Object) v); return this; }
    public SparkatronEstimator setTopK(int v) { set(topK, (Object) v); return this; }
    public SparkatronEstimator setMoeCapacityFactor(double v) { set(moeCapacityFactor, (Object) v); return this; }
    public SparkatronEstimator setMoeAuxLossCoeff(double v) { set(moeAuxLossCoeff, (Object) v); return this; }
    public SparkatronEstimator setMoeZLossCoeff(double v) { set(moeZLossCoeff, (Object) v); return this; }
    public SparkatronEstimator setGlobalBatch(int v) { set(globalBatch, (Object) v); return this; }
    public SparkatronEstimator setMicroBatch(int v) { set(microBatch, (Object) v); return this; }
    public SparkatronEstimator setSeqLen(int v) { set(seqLen, (Object) v); return this; }
    public SparkatronEstimator setSteps(int v) { set(steps, (Object) v); return this; }
    public SparkatronEstimator setLr(double v) { set(lr, (Object) v); return this; }
    public SparkatronEstimator setMinLr(double v) { set(minLr, (Object) v); return this; }
    public SparkatronEstimator setWarmupSteps(int v) { set(warmupSteps, (Object) v); return this; }
    public SparkatronEstimator setDecaySteps(int v) { set(decaySteps, (Object) v); return this; }
    public SparkatronEstimator setWeightDecay(double v) { set(weightDecay, (Object) v); return this; }
    public SparkatronEstimator setGradClip(double v) { set(gradClip, (Object) v); return this; }
    public SparkatronEstimator setSeed(long v) { set(seed, (Object) v); return this; }
    public SparkatronEstimator setInputCol(String v) { set(inputCol, v); return this; }
    public SparkatronEstimator setOutputPath(String v) { set(outputPath, v); return this; }
    public SparkatronEstimator setDropBadRows(boolean v) { set(dropBadRows, (Object) v); return this; }
    /** Starting weights: a model directory; its config.json is the model config unless modelConfig is set. */
    public SparkatronEstimator setInitFrom(String v) { set(initFrom, v); return this; }
    public SparkatronEstimator setCommTimeoutS(int v) { set(commTimeoutS, (Object) v); return this; }
    public SparkatronEstimator setBucketMb(double v) { set(bucketMb, (Object) v); return this; }
    public SparkatronEstimator setUseDistributedOptimizer(boolean v) { set(useDistributedOptimizer, (Object) v); return this; }
    public SparkatronEstimator setOverlapGradReduce(boolean v) { set(overlapGradReduce, (Object) v); return this; }
    public SparkatronEstimator setOverlapParamGather(boolean v) { set(overlapParamGather, (Object) v); return this; }
    public SparkatronEstimator setThreadsPerRank(int v) { set(threadsPerRank, (Object) v); return this; }
    public SparkatronEstimator setCheckpointDir(String v) { set(checkpointDir, v); return this; }
    public SparkatronEstimator setCheckpointEvery(int v) { set(checkpointEvery, (Object) v); return this; }
    public SparkatronEstimator setKeepCheckpoints(int v) { set(keepCheckpoints, (Object) v); return this; }
    public SparkatronEstimator setStartOver(boolean v) { set(startOver, (Object) v); return this; }
    public SparkatronEstimator setAsyncSave(boolean v) { set(asyncSave, (Object) v); return this; }
    public SparkatronEstimator setPrecision(String v) { set(precision, v); return this; }
    public SparkatronEstimator setTokenizer(String v) { set(tokenizer, v); return this; }
    public SparkatronEstimator setFp8Format(String v) { set(fp8Format, v); return this; }
    public SparkatronEstimator setFp8Recipe(String v) { set(fp8Recipe, v); return this; }
    public SparkatronEstimator setFp8Margin(int v) { set(fp8Margin, (Object) v); return this; }
    public SparkatronEstimator setFp8AmaxHistoryLen(int v) { set(fp8AmaxHistoryLen, (Object) v); return this; }
    public SparkatronEstimator setFp8AmaxComputeAlgo(String v) { set(fp8AmaxComputeAlgo, v); return this; }
    public SparkatronEstimator setFirstLastLayersBf16(boolean v) { set(firstLastLayersBf16, (Object) v); return this; }
    public SparkatronEstimator setNumLayersAtStartInBf16(int v) { set(numLayersAtStartInBf16, (Object) v); return this; }
    public SparkatronEstimator setNumLayersAtEndInBf16(int v) { set(numLayersAtEndInBf16, (Object) v); return this; }

    public SparkatronEstimator setDataSplit(String v) { set(dataSplit, v); return this; }
    public SparkatronEstimator setLogInterval(int v) { set(logInterval, (Object) v); return this; }
    public SparkatronEstimator setEvalInterval(int v) { set(evalInterval, (Object) v); return this; }
    public SparkatronEstimator setEvalIters(int v) { set(evalIters, (Object) v); return this; }
    public SparkatronEstimator setTensorboardDir(String v) { set(tensorboardDir, v); return this; }
    public SparkatronEstimator setMlflowTrackingUri(String v) { set(mlflowTrackingUri, v); return this; }
    public SparkatronEstimator setMlflowExperiment(String v) { set(mlflowExperiment, v); return this; }
    public SparkatronEstimator setMlflowRunName(String v) { set(mlflowRunName, v); return this; }

    /** Where progress lines go (null: only the log). */
    public SparkatronEstimator setProgress(PrintStream out) {
        this.progress = out;
        return this;
    }

    /** The full outcome of the last {@link #fit} (metrics, where each rank ran), or null. */
    public DistributedTraining.Result lastResult() {
        return lastResult;
    }

    /** The training config these Params describe (refuses missing or invalid values). */
    public TrainConfig toConfig() {
        ObjectNode o = TrainConfig.JSON.createObjectNode();
        if (!isDefined(modelConfig) && !isDefined(initFrom)) {
            throw new IllegalArgumentException("SparkatronEstimator: set modelConfig (a Hugging Face config.json text or path) or initFrom");
        }
        String m = isDefined(modelConfig) ? getOrDefault(modelConfig).trim() : null;
        if (m == null) {
            // the model config comes from initFrom's config.json (TrainConfig)
        } else if (m.startsWith("{")) {
            try {
                o.set("model", TrainConfig.JSON.readTree(m));
            } catch (IOException e) {
                throw new IllegalArgumentException("modelConfig is not valid JSON: " + e.getMessage(), e);
            }
        } else {
            o.put("model", m);
        }
        for (Param<?> p : params()) {
            if (p == modelConfig || !isDefined(p)) {
                continue;
            }
            o.set(configKey(p.name()), TrainConfig.JSON.valueToTree(getOrDefault(p)));
        }
        return TrainConfig.fromJson(o);
    }

    /** The training-config key of a Param: its name in snake case (modelConfig and outputPath excepted). */
    public static String configKey(String paramName) {
        String key = paramName.replaceAll("([A-Z])", "_$1").toLowerCase(java.util.Locale.ROOT);
        return switch (key) {
            case "output_path" -> "output";
            case "model_config" -> "model";
            default -> key;
        };
    }

    @Override
    public SparkatronModel fit(Dataset<?> dataset) {
        TrainConfig cfg = toConfig();
        if (cfg.tokenizer == null) { // the tokenizer stage that made the column names itself in its metadata
            String[] names = dataset.schema().fieldNames();
            if (java.util.Arrays.asList(names).contains(cfg.inputCol)) {
                var md = dataset.schema().apply(cfg.inputCol).metadata();
                if (md.contains(org.sparkatron.data.spark.TokenizeTransformer.TOKENIZER_METADATA)) {
                    cfg = cfg.with("tokenizer", TrainConfig.JSON.getNodeFactory().textNode(
                            md.getString(org.sparkatron.data.spark.TokenizeTransformer.TOKENIZER_METADATA)));
                }
            }
        }
        lastResult = DistributedTraining.run(dataset, cfg, progress);
        SparkatronModel model = SparkatronModel.of(lastResult.model()).setInputCol(cfg.inputCol).setTrainingMetrics(lastResult.metrics());
        if (cfg.tokenizer != null) {
            model.setTokenizer(cfg.tokenizer);
        }
        model.setParent(this);
        return model;
    }

    /** Spark ML's reader (found by {@code Pipeline.load} through reflection). */
    public static MLReader<SparkatronEstimator> read() {
        return new DefaultParamsReadable<SparkatronEstimator>() { }.read();
    }

    public static SparkatronEstimator load(String path) {
        return read().load(path);
    }

    @Override
    public StructType transformSchema(StructType schema) {
        return schema;
    }

    @Override
    public SparkatronEstimator copy(ParamMap extra) {
        return defaultCopy(extra);
    }
}
