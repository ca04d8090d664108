package org.sparkatron.spark;

import org.sparkatron.model.ModelLayout;
import static org.sparkatron.spark.ConfigKeys.bool;
import static org.sparkatron.spark.ConfigKeys.boolKey;
import static org.sparkatron.spark.ConfigKeys.dblKey;
import static org.sparkatron.spark.ConfigKeys.intKey;
import static org.sparkatron.spark.ConfigKeys.requireLong;
import static org.sparkatron.spark.ConfigKeys.str;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.Serializable;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import org.sparkatron.model.ConfigJson;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.precision.Fp8Recipe;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.Trainer;

/**
 * Everything a distributed training job needs, as one flat JSON object (the {@code ./sparkatron train}
 * config file, the Estimator's Params, and what the driver ships to every rank). Immutable and
 * serializable; the model shape is kept as its Hugging Face {@code config.json} text because
 * {@link ModelConfig} is not serializable.
 *
 * <p>Keys (defaults in brackets): {@code model} (an HF config.json object, or a path to one),
 * {@code dp} [1], {@code tp} [1] (alias {@code tensor_parallel}), {@code sequence_parallel} [false], {@code pp} [1]
 * (with {@code virtual_pp}, {@code decoder_first_pipeline_num_layers}, {@code decoder_last_pipeline_num_layers}),
 * {@code recompute} ["none"], {@code global_batch} [8] (samples per optimizer step over
 * all replicas), {@code micro_batch} [global_batch / dp] (samples per forward/backward on one rank),
 * {@code seq_len} [128], {@code steps} [100], {@code lr} [3e-4], {@code min_lr} [lr / 10],
 * {@code warmup_steps} [0], {@code decay_steps} [steps], {@code weight_decay} [0.1], {@code grad_clip} [1.0],
 * {@code seed} [1234], {@code input_col} ["tokens"], {@code drop_bad_rows} [false], {@code output} [none],
 * {@code comm_timeout_s} [300], {@code bucket_mb} [Megatron's default: max(40M, 1M x dp) fp32 gradient
 * elements], {@code use_distributed_optimizer} [false], {@code overlap_grad_reduce} [true],
 * {@code overlap_param_gather} [false; true needs use_distributed_optimizer and overlap_grad_reduce], {@code threads_per_rank} [1], and for the command
 * line only {@code input} (a path), {@code input_format} ["parquet"] and {@code input_schema} (a DDL
 * schema for sources such as json: {@code "tokens array<int>"}). With {@code input_format} "megatron" the
 * input is a Megatron indexed dataset instead ({@link MegatronInput}: a {@code prepare} output directory
 * or comma-separated {@code .bin}/{@code .idx} prefixes) and {@code data_split} ["100,0,0"] picks the
 * training part as Megatron's {@code --split} does, and {@code check_token_ids} [true] scans bare datasets'
 * ids before launch.
 *
 * <p>Every value is type- and range-checked ({@link ConfigJson}): unknown keys, keys given twice, strings
 * where numbers or booleans belong and non-finite numbers are refused with the key and value, and the
 * world size is computed in 64 bits.
 */
public final class TrainConfig implements Serializable {
    private static final long serialVersionUID = 1L;
    static final ObjectMapper JSON = ConfigJson.MAPPER; // refuses duplicate keys

    /** Every accepted key: anything else is refused so a typo never silently falls back to a default. */
    /** The largest world (dp x tp x cp x pp) a job may ask for. */
    static final int MAX_WORLD = 4096;

    public static final Set<String> KEYS = Set.of("model", "dp", "tp", "tensor_parallel", "sequence_parallel", "pp", "cp", "context_parallel_size", "cp_comm_type", "global_batch", "micro_batch", "seq_len",
            "steps", "lr", "min_lr", "warmup_steps", "decay_steps", "weight_decay", "grad_clip", "seed", "input_col",
            "drop_bad_rows", "output", "comm_timeout_s", "bucket_mb", "threads_per_rank", "input", "input_format", "input_schema",
            "fail_rank", "fail_step", "fail_attempts", "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "start_over", "async_save",
            "data_split", "precision", "init_from", "fp8_format", "fp8_recipe", "fp8_margin", "fp8_amax_history_len",
            "fp8_amax_compute_algo", "first_last_layers_bf16", "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16",
            "log_interval", "eval_interval", "eval_iters", "tensorboard_dir",
            "mlflow_tracking_uri", "mlflow_experiment", "mlflow_run_name", "override_lr_schedule", "use_checkpoint_lr_schedule",
            "check_token_ids", "fail_mode", "tokenizer", "virtual_pp", "num_layers_per_virtual_pipeline_stage", "decoder_first_pipeline_num_layers",
            "decoder_last_pipeline_num_layers", "recompute", "recompute_granularity",
            "use_distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather", "ep", "expert_parallel", "num_experts",
            "top_k", "moe_capacity_factor", "moe_aux_loss_coeff", "moe_z_loss_coeff");

    private final String json; // the full, normalised config

    public final String modelJson;
    public final int dp, tp, pp;
    /** Expert-parallel size: the experts of each MoE layer are split over ep of the dp replicas. */
    public final int ep;
    /**
     * Context parallelism (docs/parallel.md): ranks each sequence is split over [1] (Megatron's
     * {@code --context-parallel-size}; alias {@code context_parallel_size}) and how attention exchanges keys and
     * values across them: {@code p2p} (ring attention) [default] or {@code all_gather} (Megatron's
     * {@code --cp-comm-type}).
     */
    public final int cp;
    public final ContextParallel.CommType cpCommType;
    /**
     * Pipeline parallelism (docs/parallel.md): model chunks per pipeline rank [1; {@code virtual_pp} > 1 is
     * the interleaved schedule; Megatron's {@code num_layers_per_virtual_pipeline_stage} is accepted instead],
     * and the layers of the first and the last stage [-1: an even split] (Megatron's
     * {@code decoder_first_pipeline_num_layers} / {@code decoder_last_pipeline_num_layers}).
     */
    public final int virtualPp, firstStageLayers, lastStageLayers;
    /** Activation recomputation ["none"; "selective" or "full"]; Megatron's {@code recompute_granularity} is accepted too. */
    public final org.sparkatron.model.Recompute recompute;
    /** Sequence parallelism inside each TP group (norms, dropout, residuals on token shards). */
    public final boolean sequenceParallel;
    public final int globalBatch, microBatch, seqLen, steps;
    public final double lr, minLr;
    public final long warmupSteps, decaySteps;
    public final double weightDecay, gradClip;
    public final long seed;
    public final String inputCol;
    public final boolean dropBadRows;
    public final String output;
    public final long commTimeoutMs;
    /** Gradient bucket size in bytes of fp32 gradients (Megatron's {@code bucket_size} x 4). */
    public final long bucketBytes;
    /**
     * Data parallelism in the engine (docs/parallel.md): ZeRO-1 (Megatron's {@code use_distributed_optimizer})
     * and whether each gradient bucket's reduction overlaps the rest of the backward
     * ({@code overlap_grad_reduce}), and whether the distributed optimizer's parameter all-gather overlaps the
     * next forward ({@code overlap_param_gather}).
     */
    public final boolean useDistributedOptimizer, overlapGradReduce, overlapParamGather;
    public final int threadsPerRank;
    public final String input;
    public final String inputFormat;
    /** Optional DDL schema for sources that need one (json, csv): e.g. "tokens array&lt;int&gt;". */
    public final String inputSchema;
    /** Megatron's --split for indexed-dataset input: train,valid,test weights; training reads the first part. */
    public final String dataSplit;
    /** Fault injection for the failure tests: rank {@code failRank} throws at step {@code failStep} on the
     *  first {@code failAttempts} attempts of the stage (-1: never). Documented in docs/spark.md. */
    public final int failRank, failStep, failAttempts;
    /** How the injected failure happens: "throw" [default], or "freeze": the task thread blocks and ignores
     *  interrupts, as a thread stuck in native code or a GPU kernel would (docs/spark.md, frozen ranks). */
    public final String failMode;
    /**
     * Checkpoints (see docs/checkpoints.md): root directory on any Hadoop path [none: no checkpoints],
     * steps between saves [0: only at the end], how many to keep [2], and whether to delete existing
     * ones instead of resuming from them on the job's first attempt [false].
     */
    public final String checkpointDir;
    public final int checkpointEvery, keepCheckpoints;
    public final boolean startOver;
    /** Checkpoints written in the background while training goes on (Megatron's --async-save). */
    public final boolean asyncSave;
    /** Compute precision (docs/precision.md): fp32 [default], bf16, fp16 with dynamic loss scaling, or fp8. */
    public final Precision precision;
    /**
     * Under precision fp8, the recipe from Megatron's keys ({@code fp8_format} [hybrid], {@code fp8_recipe}
     * [delayed], {@code fp8_margin} [0], {@code fp8_amax_history_len} [1], {@code fp8_amax_compute_algo}
     * [most_recent], {@code first_last_layers_bf16} [false], {@code num_layers_at_start_in_bf16} [1],
     * {@code num_layers_at_end_in_bf16} [1]); null otherwise (the keys are then refused).
     */
    public final Fp8Recipe fp8;
    /** A Hugging Face model directory (any Hadoop path) whose weights replace the seed initialisation
     *  [none]; its config.json is the model config when {@code model} is not given ({@link InitFrom}). */
    public final String initFrom;
    /** With Megatron input: scan bare datasets' token ids against the vocabulary before launch [true] ({@link TokenIdScan}). */
    public final boolean checkTokenIds;
    /** The tokenizer of the token ids ("gpt2" or a tokenizer.json path) [none]: saved with the output model. */
    public final String tokenizer;

    /**
     * Seeing training (docs/monitoring.md): steps per console/TensorBoard/MLflow interval line
     * [steps/20, between 1 and 100], steps between evaluations on the validation split [steps/10 when there
     * is a validation split; 0 = only the final one] and global batches per evaluation [10] (Megatron's
     * {@code --log-interval}, {@code --eval-interval}, {@code --eval-iters}).
     */
    public final int logInterval, evalInterval, evalIters;
    /** Whether {@code eval_interval} was given (then a missing validation split is refused, not skipped). */
    public final boolean evalIntervalGiven;
    /** TensorBoard log directory (any Hadoop path) [none]. */
    public final String tensorboardDir;
    /** MLflow tracking server (http(s)://) [none], experiment ["sparkatron"] and run name [the output's name]. */
    public final String mlflowTrackingUri, mlflowExperiment, mlflowRunName;
    /**
     * On resume with a learning-rate schedule that differs from the checkpoint's: take this job's
     * ({@code override_lr_schedule}) or the checkpoint's ({@code use_checkpoint_lr_schedule}); neither:
     * refused (Megatron's {@code --override-opt_param-scheduler} / {@code --use-checkpoint-opt_param-scheduler}).
     */
    public final boolean overrideLrSchedule, useCheckpointLrSchedule;

    private TrainConfig(ObjectNode o) {
        for (Iterator<String> it = o.fieldNames(); it.hasNext(); ) {
            String k = it.next();
            if (!KEYS.contains(k)) {
                throw new IllegalArgumentException("unknown config key '" + k + "' (known: " + new java.util.TreeSet<>(KEYS) + ")");
            }
        }
        JsonNode m = o.get("model");
        this.initFrom = str(o, "init_from", null);
        if ((m == null || m.isNull()) && initFrom != null) { // the model directory's config.json
            m = InitFrom.config(initFrom, new org.apache.hadoop.conf.Configuration());
            o.set("model", m);
        }
        if (m == null || m.isNull()) {
            throw new IllegalArgumentException("config key 'model' is missing: give a Hugging Face config.json object or a path to one");
        }
        if (m.isTextual()) {
            byte[] bytes;
            try {
                bytes = Files.readAllBytes(Path.of(m.asText()));
            } catch (IOException | java.nio.file.InvalidPathException e) {
                throw new IllegalArgumentException("cannot read model config '" + m.asText() + "': " + e, e);
            }
            m = ConfigJson.parse(bytes, "model config '" + m.asText() + "'");
            o.set("model", m);
        } else if (!m.isObject()) {
            throw new IllegalArgumentException("config key 'model' must be a config.json object or a path to one, got " + m);
        }
        m = withMoeOverrides(o, m);
        ModelConfig mc;
        try {
            mc = ModelConfig.fromJson(m);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("model config: " + e.getMessage(), e);
        }
        this.modelJson = mc.toJson().toString();
        ConfigKeys.alias(o, "tp", "tensor_parallel", false); // the name for "tp": one key in the normalised config
        ConfigKeys.alias(o, "cp", "context_parallel_size", false); // Megatron's names
        ConfigKeys.alias(o, "ep", "expert_parallel", false);
        ConfigKeys.alias(o, "recompute", "recompute_granularity", true);
        this.sequenceParallel = bool(o, "sequence_parallel", false);
        this.dp = intKey(o, "dp", 1, 1);
        this.tp = intKey(o, "tp", 1, 1);
        this.pp = intKey(o, "pp", 1, 1);
        this.cp = intKey(o, "cp", 1, 1);
        try {
            this.cpCommType = ContextParallel.CommType.parse(str(o, "cp_comm_type", "p2p"));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("config key 'cp_comm_type': " + e.getMessage(), e);
        }
        this.ep = intKey(o, "ep", 1, 1);
        if (o.hasNonNull("num_layers_per_virtual_pipeline_stage")) { // Megatron's way of saying virtual_pp
            int per = intKey(o, "num_layers_per_virtual_pipeline_stage", 1, 1);
            if (mc.layers() % ((long) pp * per) != 0) {
                throw new IllegalArgumentException("num_layers_per_virtual_pipeline_stage " + per + ": the " + mc.layers()
                        + " layers are not divisible by pp " + pp + " x " + per);
            }
            int v = mc.layers() / (pp * per);
            if (o.hasNonNull("virtual_pp") && intKey(o, "virtual_pp", 1, 1) != v) {
                throw new IllegalArgumentException("config keys 'virtual_pp' (" + o.get("virtual_pp") + ") and "
                        + "'num_layers_per_virtual_pipeline_stage' (" + per + ", so virtual_pp " + v + ") disagree: give one of them");
            }
            o.remove("num_layers_per_virtual_pipeline_stage");
            o.put("virtual_pp", v);
        }
        this.virtualPp = intKey(o, "virtual_pp", 1, 1);
        this.firstStageLayers = intKey(o, "decoder_first_pipeline_num_layers", -1, 1);
        this.lastStageLayers = intKey(o, "decoder_last_pipeline_num_layers", -1, 1);
        try {
            this.recompute = org.sparkatron.model.Recompute.parse(str(o, "recompute", "none"));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("config key 'recompute': " + e.getMessage(), e);
        }
        this.globalBatch = intKey(o, "global_batch", 8, 1);
        this.microBatch = intKey(o, "micro_batch", Math.max(1, globalBatch / dp), 1);
        this.seqLen = intKey(o, "seq_len", Math.min(128, mc.maxPositions()), 1);
        this.steps = intKey(o, "steps", 100, 1);
        this.lr = dblKey(o, "lr", 3e-4);
        this.minLr = dblKey(o, "min_lr", lr / 10);
        this.warmupSteps = intKey(o, "warmup_steps", 0, 0);
        this.decaySteps = intKey(o, "decay_steps", steps, 0);
        this.weightDecay = dblKey(o, "weight_decay", 0.1);
        this.gradClip = dblKey(o, "grad_clip", 1.0);
        this.seed = o.has("seed") ? requireLong(o, "seed") : 1234L;
        this.inputCol = str(o, "input_col", "tokens");
        this.dropBadRows = bool(o, "drop_bad_rows", false);
        this.output = str(o, "output", null);
        this.commTimeoutMs = 1000L * intKey(o, "comm_timeout_s", 300, 1);
        double mb = dblKey(o, "bucket_mb", 4.0 * DataParallel.defaultBucketElements(dp) / (1 << 20));
        if (!(mb > 0)) {
            throw new IllegalArgumentException("config key 'bucket_mb' must be > 0, got " + mb);
        }
        this.bucketBytes = Math.max(4, (long) (mb * (1 << 20)));
        this.useDistributedOptimizer = boolKey(o, "use_distributed_optimizer");
        this.overlapGradReduce = !o.hasNonNull("overlap_grad_reduce") || boolKey(o, "overlap_grad_reduce");
        this.overlapParamGather = boolKey(o, "overlap_param_gather");
        dataParallelConfig(); // refuses overlap_param_gather without the distributed optimizer or overlap_grad_reduce
        this.threadsPerRank = intKey(o, "threads_per_rank", 1, 1);
        this.input = str(o, "input", null);
        this.inputFormat = str(o, "input_format", "parquet");
        this.inputSchema = str(o, "input_schema", null);
        this.dataSplit = str(o, "data_split", "100,0,0");
        this.failRank = intKey(o, "fail_rank", -1, -1);
        this.failStep = intKey(o, "fail_step", -1, -1);
        this.failAttempts = intKey(o, "fail_attempts", 0, 0);
        this.failMode = str(o, "fail_mode", "throw");
        if (!failMode.equals("throw") && !failMode.equals("freeze")) {
            throw new IllegalArgumentException("config key 'fail_mode' must be \"throw\" or \"freeze\", got \"" + failMode + "\"");
        }
        this.checkpointDir = str(o, "checkpoint_dir", null);
        this.checkpointEvery = intKey(o, "checkpoint_every", 0, 0);
        this.keepCheckpoints = intKey(o, "keep_checkpoints", 2, 1);
        this.startOver = bool(o, "start_over", false);
        this.asyncSave = bool(o, "async_save", false);
        this.checkTokenIds = bool(o, "check_token_ids", true);
        try {
            this.precision = Precision.parse(str(o, "precision", "fp32"));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("config key 'precision': " + e.getMessage(), e);
        }
        java.util.Map<String, String> fp8Keys = new java.util.LinkedHashMap<>();
        for (String k : Fp8Recipe.KEYS) {
            if (o.hasNonNull(k)) {
                fp8Keys.put(k, o.get(k).asText());
            }
        }
        if (precision != Precision.FP8 && !fp8Keys.isEmpty()) {
            throw new IllegalArgumentException("config key '" + fp8Keys.keySet().iterator().next() + "' applies to precision fp8, not "
                    + precision.label());
        }
        try {
            this.fp8 = precision == Precision.FP8 ? Fp8Recipe.parse(fp8Keys::get) : null;
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("config key " + e.getMessage(), e);
        }
        this.tokenizer = str(o, "tokenizer", null);
        this.logInterval = intKey(o, "log_interval", Math.max(1, Math.min(100, steps / 20)), 1);
        this.evalIntervalGiven = o.hasNonNull("eval_interval");
        this.evalInterval = intKey(o, "eval_interval", Math.max(1, steps / 10), 0);
        this.evalIters = intKey(o, "eval_iters", 10, 1);
        this.tensorboardDir = str(o, "tensorboard_dir", null);
        this.mlflowTrackingUri = str(o, "mlflow_tracking_uri", null);
        this.mlflowExperiment = str(o, "mlflow_experiment", "sparkatron");
        this.mlflowRunName = str(o, "mlflow_run_name", null);
        this.overrideLrSchedule = boolKey(o, "override_lr_schedule");
        this.useCheckpointLrSchedule = boolKey(o, "use_checkpoint_lr_schedule");
        if (overrideLrSchedule && useCheckpointLrSchedule) {
            throw new IllegalArgumentException("override_lr_schedule and use_checkpoint_lr_schedule contradict each other: give one");
        }
        if (mlflowTrackingUri != null && !mlflowTrackingUri.startsWith("http://") && !mlflowTrackingUri.startsWith("https://")) {
            throw new IllegalArgumentException("mlflow_tracking_uri must be an http(s):// MLflow tracking server, got '" + mlflowTrackingUri + "'");
        }
        this.json = o.toString();
        validate(mc);
    }

    /**
     * The job's MoE keys written into the model config: {@code num_experts} (num_local_experts), {@code top_k}
     * (num_experts_per_tok), {@code moe_capacity_factor}, {@code moe_aux_loss_coeff}, {@code moe_z_loss_coeff};
     * they need a {@code mixtral} model.
     */
    private static JsonNode withMoeOverrides(ObjectNode o, JsonNode model) {
        String[][] keys = {{"num_experts", "num_local_experts"}, {"top_k", "num_experts_per_tok"},
            {"moe_capacity_factor", "moe_expert_capacity_factor"}, {"moe_aux_loss_coeff", "moe_aux_loss_coeff"},
            {"moe_z_loss_coeff", "moe_z_loss_coeff"}};
        ObjectNode m = null;
        for (String[] k : keys) {
            if (!o.has(k[0])) {
                continue;
            }
            if (!"mixtral".equals(model.path("model_type").asText())) {
                throw new IllegalArgumentException("config key '" + k[0] + "' needs a mixture-of-experts model (model_type mixtral), got '"
                        + model.path("model_type").asText() + "'");
            }
            if (m == null) {
                m = ((ObjectNode) model).deepCopy();
            }
            m.set(k[1], o.get(k[0]));
        }
        if (m != null) {
            o.set("model", m);
            return m;
        }
        return model;
    }

    private void validate(ModelConfig mc) {
        long world = (long) dp * tp * cp * pp; // 64-bit: each factor may be up to 2^31 - 1
        if (world > MAX_WORLD) {
            throw new IllegalArgumentException("world size dp x tp x " + (cp > 1 ? "cp x " : "") + "pp = " + dp + " x " + tp + " x "
                    + (cp > 1 ? cp + " x " : "") + pp + " = " + world + " is larger than " + MAX_WORLD);
        }
        if (cp > 1 && mc.isMoe()) {
            throw new IllegalArgumentException("cp " + cp + " with a mixture-of-experts model is not supported yet: use cp 1 "
                    + "(docs/parallel.md)");
        }
        if (dp % ep != 0) {
            throw new IllegalArgumentException("ep " + ep + " does not divide dp " + dp
                    + ": expert-parallel ranks are data-parallel replicas of the dense layers");
        }
        if (useDistributedOptimizer && mc.isMoe()) {
            throw new IllegalArgumentException("use_distributed_optimizer with a mixture-of-experts model is not supported yet "
                    + "(the experts' optimizer state would shard over the expert-data-parallel group); leave it false");
        }
        if (seqLen > mc.maxPositions()) {
            throw new IllegalArgumentException("seq_len " + seqLen + " exceeds the model's max positions " + mc.maxPositions());
        }
        if (globalBatch % dp != 0) {
            throw new IllegalArgumentException("global_batch " + globalBatch + " is not divisible by dp " + dp);
        }
        if ((globalBatch / dp) % microBatch != 0) {
            throw new IllegalArgumentException("global_batch / dp = " + globalBatch / dp + " samples per replica is not divisible by micro_batch " + microBatch);
        }
        if (fp8 != null) { // refused here, on the driver, before any executor starts
            org.sparkatron.model.ModelLayout.validateFp8(mc, tp, fp8);
            org.sparkatron.precision.Fp8Linear.requireRows((long) microBatch * seqLen, "the transformer layers' FP8 GEMMs");
        }
        if (inputCol.isEmpty()) {
            throw new IllegalArgumentException("input_col must not be empty");
        }
        schedule(); // validates the learning rates
        if (!(gradClip >= 0) || !(weightDecay >= 0)) {
            throw new IllegalArgumentException("grad_clip (" + gradClip + ") and weight_decay (" + weightDecay + ") must be >= 0");
        }
    }

    /** Parses a config object (a copy is kept; the argument is not modified). */
    public static TrainConfig fromJson(JsonNode node) {
        if (node == null || !node.isObject()) {
            throw new IllegalArgumentException("a training config must be a JSON object");
        }
        return new TrainConfig(((ObjectNode) node).deepCopy());
    }

    public static TrainConfig load(Path file) throws IOException {
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(file);
        } catch (IOException e) {
            throw new IOException("cannot read training config " + file + ": " + e, e);
        }
        JsonNode n = ConfigJson.parse(bytes, file.toString());
        try {
            return fromJson(n);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException(file + ": " + e.getMessage(), e);
        }
    }

    /** Keys whose values are strings: a command-line value for them is never read as a number or boolean. */
    static final Set<String> STRING_KEYS = Set.of("input_col", "output", "input", "input_format", "input_schema", "checkpoint_dir",
            "data_split", "precision", "init_from", "tensorboard_dir", "mlflow_tracking_uri", "mlflow_experiment", "mlflow_run_name");

    /**
     * This config with {@code key} set to {@code value}, parsed as JSON when it parses, else a string (refused
     * where a number or boolean belongs). For string keys, anything but a JSON string is the text itself
     * ({@code --output 2024} is a directory name).
     */
    public TrainConfig with(String key, String value) {
        JsonNode v;
        try {
            v = JSON.readTree(value);
            if (v == null || v.isMissingNode()) {
                v = JSON.getNodeFactory().textNode(value);
            }
        } catch (IOException e) {
            v = JSON.getNodeFactory().textNode(value);
        }
        if (STRING_KEYS.contains(key) && !v.isTextual()) {
            v = JSON.getNodeFactory().textNode(value);
        }
        return with(key, v);
    }

    public TrainConfig with(String key, JsonNode value) {
        ObjectNode o = toJson();
        o.set(key, value);
        return new TrainConfig(o);
    }

    /** Applies {@code --key value} pairs (dashes in keys may be written as '-' or '_'). */
    public TrainConfig withOverrides(Map<String, String> overrides) {
        TrainConfig c = this;
        for (Map.Entry<String, String> e : overrides.entrySet()) {
            c = c.with(e.getKey().replace('-', '_'), e.getValue());
        }
        return c;
    }

    public ObjectNode toJson() {
        try {
            return (ObjectNode) JSON.readTree(json);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /**
     * The config as this job runs it: every key with its value after defaults (the model as its
     * normalised Hugging Face config), for {@code train_config.json}, checkpoints and MLflow params.
     */
    public ObjectNode resolved() {
        ObjectNode o = toJson();
        try {
            o.set("model", JSON.readTree(modelJson));
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        o.put("dp", dp).put("tp", tp).put("pp", pp).put("cp", cp).put("cp_comm_type", cpCommType.label())
                .put("virtual_pp", virtualPp).put("recompute", recompute.label())
                .put("sequence_parallel", sequenceParallel).put("global_batch", globalBatch)
                .put("micro_batch", microBatch).put("seq_len", seqLen).put("steps", steps).put("lr", lr).put("min_lr", minLr)
                .put("warmup_steps", warmupSteps).put("decay_steps", schedule().decaySteps()).put("weight_decay", weightDecay)
                .put("grad_clip", gradClip).put("seed", seed).put("precision", precision.label()).put("input_col", inputCol)
                .put("input_format", inputFormat).put("data_split", dataSplit).put("bucket_mb", bucketBytes / 1048576.0)
                .put("use_distributed_optimizer", useDistributedOptimizer).put("overlap_grad_reduce", overlapGradReduce)
                .put("overlap_param_gather", overlapParamGather)
                .put("threads_per_rank", threadsPerRank).put("comm_timeout_s", commTimeoutMs / 1000).put("log_interval", logInterval)
                .put("eval_interval", evalInterval).put("eval_iters", evalIters);
        return o;
    }

    public ModelConfig model() {
        try {
            return ModelConfig.fromJson(JSON.readTree(modelJson));
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** How the engine reduces gradients over the data-parallel group (Megatron's DistributedDataParallelConfig). */
    public DataParallel.Config dataParallelConfig() {
        return new DataParallel.Config(useDistributedOptimizer, bucketBytes / 4, overlapGradReduce, overlapParamGather);
    }

    public int world() {
        return dp * tp * cp * pp;
    }

    /** The layers of each pipeline stage (and virtual chunk); validates the split. */
    public org.sparkatron.parallel.PipelineLayout pipelineLayout() {
        return org.sparkatron.parallel.PipelineLayout.of(model().layers(), pp, virtualPp, firstStageLayers, lastStageLayers);
    }

    /** Micro-batches one replica runs per optimizer step (through the pipeline schedule when pp > 1). */
    public int microBatches() {
        return replicaBatch() / microBatch;
    }

    /** Samples one replica consumes per optimizer step. */
    public int replicaBatch() {
        return globalBatch / dp;
    }

    public LrSchedule schedule() {
        return new LrSchedule(lr, minLr, warmupSteps, Math.max(decaySteps, warmupSteps));
    }

    public Trainer.Options trainerOptions() {
        Trainer.Options d = Trainer.Options.defaults(microBatch, schedule());
        return new Trainer.Options(microBatch, replicaBatch() / microBatch, schedule(), d.beta1(), d.beta2(), d.eps(),
                (float) weightDecay, (float) gradClip);
    }

    @Override
    public String toString() {
        return json;
    }

    /** Parses {@code --key value} pairs from a command line, in order. */
    public static Map<String, String> parseArgs(String[] args, int from) {
        Map<String, String> out = new LinkedHashMap<>();
        for (int i = from; i < args.length; i++) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --key value, got '" + args[i] + "'");
            }
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException("option " + args[i] + " needs a value");
            }
            String key = args[i].substring(2);
            if (out.containsKey(key)) {
                throw new IllegalArgumentException("option " + args[i] + " is given twice ('" + out.get(key) + "' and '" + args[i + 1] + "')");
            }
            out.put(key, args[++i]);
        }
        return out;
    }

    /** The validation samples one replica reads over the whole job: evaluations x eval_iters x its batch. */
    public long validSamplesPerReplica() {
        return (long) evaluations() * evalIters * replicaBatch();
    }

    /** Evaluations in the whole job: one every eval_interval steps, plus a final one unless the last step had one. */
    public int evaluations() {
        if (evalInterval == 0) {
            return 1;
        }
        return steps / evalInterval + (steps % evalInterval == 0 ? 0 : 1);
    }

    /** Evaluations done by the end of {@code step} (at multiples of eval_interval, and at the last step). */
    public long evaluationsBy(long step) {
        long n = evalInterval == 0 ? 0 : step / evalInterval;
        return step >= steps && (evalInterval == 0 || steps % evalInterval != 0) ? n + 1 : n;
    }

    /** Whether an evaluation follows {@code step}. */
    public boolean evaluatesAt(long step) {
        return step == steps || (evalInterval > 0 && step % evalInterval == 0);
    }

}
