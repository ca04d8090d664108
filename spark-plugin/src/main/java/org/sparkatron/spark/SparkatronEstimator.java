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
import org.apache.spark.ml.util.Identifiable$;
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
 * Blocking; one fit at a time per instance.
 */
public final class SparkatronEstimator extends Estimator<SparkatronModel> {
    private static final long serialVersionUID = 1L;
    private final String uid;
    private transient PrintStream progress = System.out;
    private transient DistributedTraining.Result lastResult;

    private final Param<String> modelConfig;
    private final IntParam dp;
    private final IntParam tp;
    private final IntParam pp;
    private final IntParam tensorParallel;
    private final BooleanParam sequenceParallel;
    private final IntParam ep;
    private final IntParam numExperts;
    private final IntParam topK;
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

    public SparkatronEstimator() {
        this(Identifiable$.MODULE$.randomUID("sparkatron"));
    }

    public SparkatronEstimator(String uid) {
        this.uid = uid;
        // created after uid is set: a Param records its parent's uid
        modelConfig = new Param<>(this, "modelConfig", "Hugging Face config.json (JSON text or a path)");
        dp = new IntParam(this, "dp", "data-parallel replicas (ranks)");
        tp = new IntParam(this, "tp", "tensor-parallel size (ranks per replica)");
        pp = new IntParam(this, "pp", "pipeline-parallel size (1 until the engine supports more)");
        tensorParallel = new IntParam(this, "tensorParallel", "tensor-parallel size (ranks per replica; alias of tp)");
        sequenceParallel = new BooleanParam(this, "sequenceParallel", "sequence parallelism inside each tensor-parallel group");
        ep = new IntParam(this, "ep", "expert-parallel size (MoE models: experts split over ep of the dp replicas)");
        numExperts = new IntParam(this, "numExperts", "experts per MoE layer (overrides the mixtral config's num_local_experts)");
        topK = new IntParam(this, "topK", "experts per token (overrides the mixtral config's num_experts_per_tok)");
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
    public IntParam tensorParallel() { return tensorParallel; }
    public BooleanParam sequenceParallel() { return sequenceParallel; }
    public IntParam ep() { return ep; }
    public IntParam numExperts() { return numExperts; }
    public IntParam topK() { return topK; }
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

    public SparkatronEstimator setModelConfig(String v) { set(modelConfig, v); return this; }
    public SparkatronEstimator setDp(int v) { set(dp, (Object) v); return this; }
    public SparkatronEstimator setTp(int v) { set(tp, (Object) v); return this; }
    public SparkatronEstimator setPp(int v) { set(pp, (Object) v); return this; }
    public SparkatronEstimator setTensorParallel(int v) { set(tensorParallel, (Object) v); return this; }
    public SparkatronEstimator setSequenceParallel(boolean v) { set(sequenceParallel, (Object) v); return this; }
    public SparkatronEstimator setEp(int v) { set(ep, (Object) v); return this; }
    public SparkatronEstimator setNumExperts(int v) { set(numExperts, (Object) v); return this; }
    public SparkatronEstimator setTopK(int v) { set(topK, (Object) v); return this; }
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
            String key = p.name().replaceAll("([A-Z])", "_$1").toLowerCase(java.util.Locale.ROOT);
            key = key.equals("output_path") ? "output" : key;
            o.set(key, TrainConfig.JSON.valueToTree(getOrDefault(p)));
        }
        return TrainConfig.fromJson(o);
    }

    @Override
    public SparkatronModel fit(Dataset<?> dataset) {
        TrainConfig cfg = toConfig();
        lastResult = DistributedTraining.run(dataset, cfg, progress);
        SparkatronModel model = SparkatronModel.of(lastResult.model()).setInputCol(cfg.inputCol);
        model.setParent(this);
        return model;
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
