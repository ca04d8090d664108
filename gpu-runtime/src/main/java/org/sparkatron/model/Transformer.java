package org.sparkatron.model;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Device;
import org.sparkatron.device.DeviceMemoryException;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.AttentionCore;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.optim.AdamW;
import org.sparkatron.parallel.CommLane;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.GradBuffer;
import org.sparkatron.parallel.Mapping;
import org.sparkatron.parallel.Mappings;
import org.sparkatron.parallel.PipelineLayout;
import org.sparkatron.parallel.PipelineParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.parallel.pipeline.ForwardOnly;
import org.sparkatron.parallel.pipeline.Schedule;
import org.sparkatron.precision.Fp8State;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * A decoder-only language model (GPT-2 or Llama family) on one rank of a tensor- and pipeline-parallel
 * layout: vocab-parallel embedding, {@code L} blocks, final norm, vocab-parallel output projection and
 * cross-entropy, each with an explicit backward. The rank holds one or more {@link ModelChunk}s (its
 * pipeline stage's layers; several under an interleaved schedule); without pipelining that is one chunk
 * with everything. TP = 1 and PP = 1 ({@link #Transformer(ModelConfig, Device)}) are the same code with
 * groups of one, where every mapping is the identity.
 *
 * <p>Memory: everything lives on the rank's {@link Device} ({@link RankContext}): this rank's parameter
 * shards and gradients are one block each ({@link ParameterSet}), over all its chunks; activations belong
 * to micro-batches ({@link MicroBatch}: one set per micro-batch in flight, what each layer keeps set by the
 * {@link Recompute} mode), pooled per chunk and reused across steps, so a step allocates nothing after the
 * first. The output layer and loss run in row chunks so the {@code [B*T, V/tp]} logits never exist at once
 * during training. {@link #close()} returns all of it to the device.
 *
 * <p>Stream order: a training pass ({@link #forwardBackward(int[], int, int, float, Tensor, int, double)},
 * {@link #finishGradients}, {@link #gradSquaredNorm(Tensor, int)}) only issues kernels, device copies and
 * collectives, and leaves its figures in device scalars; it never waits for the device. The convenience
 * forms that return a {@code double} ({@link #forwardBackward(int[], int, int, float)}, {@link #loss},
 * {@link #logits}, {@link #gradSquaredNorm()}) synchronise, for tests and tools.
 *
 * <p>Precision ({@link Precision}, docs/precision.md): {@link #params()} holds fp32 master weights and the fp32
 * gradient block. Under BF16/FP16 the layers compute from 16-bit weights in BF16/F16 elements, the master
 * weights rounded at the start of every forward pass (so any change to the master weights, by the optimizer, a
 * checkpoint load or {@link #initialize}, is seen by the next pass), each unit (layer, embedding, head) widened
 * into one fp32 buffer just before its kernels read it ({@link WeightStaging}); with the distributed optimizer
 * the weight block itself is the 16-bit copy during training and the fp32 master is the optimizer's shard
 * ({@link #finishParamGather}). The kernels are wrapped in {@link RoundingKernels}, which rounds activations
 * and activation gradients.
 *
 * <p>Pipeline parallelism ({@link PipelineParallel} in the context): {@link #forwardBackward(List, int, int,
 * float, Tensor, int, double)} runs Megatron's schedule for the micro-batches ({@link Schedule#of}: 1F1B, or
 * interleaved 1F1B with several chunks per stage), passing activations and gradients between stages with
 * the pipeline group's tagged send and receive. Only the last stage computes the loss; it is summed over
 * the pipeline group so every stage reports it. Tied input/output embeddings live on the first and the last
 * stage; {@link #finishGradients} sums their gradients over the embedding group, as Megatron does, so the
 * two copies stay identical, and {@link #gradSquaredNorm} counts them once.
 *
 * <p>Context parallelism ({@link ContextParallel} in the context): every sequence of {@code T} tokens is split
 * over the CP group, this rank taking chunks r and {@code 2cp-1-r} of {@code 2cp} ({@code T / cp} rows per
 * sequence), for tokens, targets and positions alike; the passes take the whole samples and keep this rank's
 * rows. Attention runs across the group ({@link AttentionCore}: ring or all-gather); everything else is per
 * token. The reported loss is the mean over the whole sequences (averaged over the CP group); the gradients
 * each rank accumulates are those of its own tokens' mean loss, so the trainer averages them over the
 * data-parallel x context-parallel group (Megatron folds CP into the data-parallel gradient reduction), which
 * gives the whole batch's gradient. CP does not split parameters.
 *
 * <p>Threading and blocking: one rank, one thread. Every public method that computes
 * ({@link #forwardBackward}, {@link #loss}, {@link #logits}, {@link #finishGradients},
 * {@link #gradSquaredNorm}, {@link #initialize}) is a collective of the rank's TP, PP and CP groups: all their
 * ranks call it with the same batch, and a failed peer makes it throw the communicator's exception.
 */
public final class Transformer {
    private final ModelConfig cfg;
    private final RankContext ctx;
    private final Device device;
    private final Kernels k;
    private final TensorParallel tp;
    private final PipelineParallel pp;
    private final ContextParallel cp;
    private final ParameterSet params;
    private final Precision precision;
    private final ParameterSet compute; // what the layers read: params itself (fp32) or views of the staging buffer
    private final Tensor half;          // mixed precision without a sharded master: the 16-bit weights (BF16/F16); else null
    private final WeightStaging staging; // mixed precision: the fp32 buffer one unit's 16-bit weights are widened into
    private final Workspace ws;
    private final Tensor ropeCos; // [maxPos, hd/2] (Llama only)
    private final Tensor ropeSin;
    private final List<ModelChunk> chunks = new ArrayList<>();
    private final RankBuffers buffers;
    private final StepRunner runner;
    private final DistributedDataParallel ddp; // null: the training loop reduces gradients (GradientSync)
    private final List<AdamW.Piece> ownedPieces; // with the distributed optimizer: this rank's gradient shard, per parameter
    private final Tensor normScratch; // F64 [1]: this rank's part of the squared gradient norm, then the sum
    private final Tensor scalars;     // F64 [1] for the synchronising convenience methods
    private final Fp8State fp8;       // precision fp8: the recipe state of the blocks' FP8 GEMMs; else null
    private final ExpertParallel ep;
    private final MoeStep moeStep;    // MoE models: the pass settings and statistics the MoE layers share
    private final ByteBuffer scalarsHost = ByteBuffer.allocateDirect(8).order(ByteOrder.nativeOrder());
    private Recompute recompute = Recompute.NONE;
    private DropoutRng dropout;
    private long dropoutRowOffset;
    private long trainSteps;

    /** A model on one rank alone (TP = 1, PP = 1, fp32) on {@code device}. */
    public Transformer(ModelConfig cfg, Device device) {
        this(cfg, RankContext.single(device));
    }

    /**
     * This rank's part of a model split over the context's TP and PP groups, computing in the context's
     * precision (for BF16/FP16 the kernels round to 16 bits and a 16-bit-rounded copy of the weights is kept
     * beside the fp32 master weights). Needs the attention heads, the key/value heads and the MLP width
     * divisible by the TP size; key/value heads are never replicated, so fewer key/value heads than TP ranks
     * is refused. A model that cannot fit the device is refused before anything is allocated
     * ({@link DeviceMemoryException}, with the bytes it needs), and so is a model with experts on a device
     * without MoE kernels ({@link org.sparkatron.device.Kernels#hasMoeKernels()}).
     */
    public Transformer(ModelConfig cfg, RankContext ctx) {
        TensorParallel tp = ctx.tp();
        ModelLayout.validate(cfg, tp.size());
        ModelLayout.validateExperts(cfg, ctx.expertParallel().size(), tp.size());
        if (cfg.isMoe() && !ctx.kernels().hasMoeKernels()) {
            throw new IllegalArgumentException("a mixture-of-experts model (num_local_experts " + cfg.moe().experts() + ") on "
                    + ctx.device().name() + ": this device has no MoE kernels (docs/moe.md)");
        }
        this.ep = ctx.expertParallel();
        this.cfg = cfg;
        this.ctx = ctx;
        this.device = ctx.device();
        this.precision = ctx.precision();
        this.k = ctx.kernels();
        this.tp = tp;
        this.pp = ctx.pipeline() != null ? ctx.pipeline() : PipelineParallel.none(cfg.layers());
        this.cp = ctx.contextParallel();
        if (cp.size() > 1 && cfg.isMoe()) {
            // Megatron reduces the routers' token counts over TP x CP for the load-balancing loss: not built yet
            throw new IllegalArgumentException("context parallelism (cp " + cp.size() + ") with a mixture-of-experts model "
                    + "is not supported yet");
        }
        if (pp.layout().layers() != cfg.layers()) {
            throw new IllegalArgumentException("the pipeline layout is for " + pp.layout().layers() + " layers, the model has "
                    + cfg.layers());
        }
        ParameterSet.Builder layout = ModelLayout.layout(cfg, tp.size(), ep.size(), pp.layout(), pp.stage());
        DataParallel dp = ctx.dataParallel();
        if (dp != null && cfg.isMoe()) {
            // the expert region must stay one block at the end (ExpertGradientSync); Megatron's buffer order would split it
            throw new IllegalArgumentException("a mixture-of-experts model with data parallelism inside the model (DataParallel) "
                    + "is not supported yet: reduce its gradients with ExpertGradientSync (no DataParallel in the RankContext)");
        }
        GradBuffer plan = null;
        if (dp != null) { // Megatron's gradient buffer order and padding
            plan = ModelLayout.gradBuffer(cfg, layout.params(), pp.layout(), pp.stage(), dp.config(), dp.size());
            layout = layout.relayout(plan.offsets(), plan.numel());
        }
        // With the distributed optimizer under mixed precision the fp32 master weights are sharded (the
        // optimizer keeps this rank's shard); the model's weight block is then its 16-bit copy.
        boolean separateCompute = precision.isReduced() && !shardedMaster(dp, precision);
        long weightBytes = Math.multiplyExact(layout.numel(), 4L) * 2 + (separateCompute ? 2 * layout.numel() : 0)
                + (precision.isReduced() ? 4 * WeightStaging.scratchElements(layout.params()) : 0);
        if (weightBytes > device.capacityBytes()) {
            throw new DeviceMemoryException(device.name(), cfg.family().name().toLowerCase(java.util.Locale.ROOT) + " model of "
                    + layout.numel() + " parameters per rank (weights and gradients"
                    + (separateCompute ? ", and a 16-bit compute copy" : "") + ")", weightBytes, device.capacityBytes());
        }
        if (precision == Precision.FP8) {
            String why = device.fp8Unsupported();
            if (why != null) {
                throw new IllegalArgumentException(why);
            }
            if (!ctx.kernels().supportsFp8()) {
                throw new IllegalArgumentException("precision fp8: the kernels of " + device.name() + " do not implement FP8 yet;"
                        + " use precision bf16");
            }
            ModelLayout.validateFp8(cfg, tp.size(), ctx.fp8Recipe());
        }
        this.params = layout.build(device);
        this.half = separateCompute ? device.zeros(MemoryKind.PARAMETERS, precision.format(), params.numel()) : null;
        this.staging = precision.isReduced() ? new WeightStaging(device, k, params.params()) : null;
        this.compute = staging != null ? params.withWeightViews(staging.views()) : params;
        this.ws = new Workspace(device);
        this.normScratch = device.allocate(MemoryKind.WORKSPACE, DType.F64, 1);
        this.scalars = device.allocate(MemoryKind.WORKSPACE, DType.F64, 1);
        this.moeStep = cfg.isMoe() ? new MoeStep(device.zeros(MemoryKind.WORKSPACE, DType.F64, MoeStep.STATS), ModelLayout.moeLayers(cfg), params,
                cfg.moe().expertBias() ? device.zeros(MemoryKind.WORKSPACE, DType.F64, ModelLayout.moeLayers(cfg), cfg.moe().experts()) : null) : null;
        if (cfg.family().usesRope()) {
            Tensor[] tables = ModelLayout.ropeTables(cfg);
            ropeCos = device.allocate(MemoryKind.WORKSPACE, DType.F32, cfg.maxPositions(), cfg.headDim() / 2);
            ropeSin = device.allocate(MemoryKind.WORKSPACE, DType.F32, cfg.maxPositions(), cfg.headDim() / 2);
            device.upload(ropeCos, tables[0].hostBuffer());
            device.upload(ropeSin, tables[1].hostBuffer());
        } else {
            ropeCos = null;
            ropeSin = null;
        }
        int vocabLocal = cfg.paddedVocab(tp.size()) / tp.size();
        this.buffers = new RankBuffers(device, vocabLocal, pp.holdsLast(), cp, AttentionCore.of(ctx));
        PipelineLayout pl = pp.layout();
        int[] fp8Index = new int[cfg.layers()]; // each layer's position among the model's FP8 layers, -1 for bf16 (all stages)
        int fp8Blocks = 0;
        for (int i = 0; i < cfg.layers(); i++) {
            fp8Index[i] = precision == Precision.FP8 && ctx.fp8Recipe().fp8Layer(i, cfg.layers()) ? fp8Blocks++ : -1;
        }
        this.fp8 = precision == Precision.FP8 ? new Fp8State(ctx, ctx.fp8Recipe(), 4 * fp8Blocks) : null;
        for (int c = 0; c < pp.chunks(); c++) {
            chunks.add(new ModelChunk(cfg, ctx, params, compute, staging, pl.firstLayer(pp.stage(), c), pl.endLayer(pp.stage(), c),
                    pl.isFirst(pp.stage(), c), pl.isLast(pp.stage(), c), ropeCos, ropeSin, ws, buffers, moeStep, fp8,
                    fp8Index));
        }
        this.runner = new StepRunner(device, pp, cp, chunks);
        if (dp != null) {
            boolean overlap = dp.config().overlapGradReduce() && dp.size() > 1;
            // the device's communication queue (a GPU's second communication stream) runs the reductions; the CPU
            // device's calls are done when they return, so there a thread of its own does
            CommLane lane = overlap ? CommLane.forDevice(device, "sparkatron-dp-" + device.name() + "-" + dp.rank())
                    : CommLane.inline();
            this.ddp = new DistributedDataParallel(params, plan, new Communicator[] {dp.group()}, lane, dp.config().overlapGradReduce(),
                    dp.config().overlapParamGather());
            runner.setGradReadyHook(ddp);
            if (ddp.overlapsParamGather()) {
                // the weight block's buckets arrive during the forward: each waited for before the first layer that
                // reads it (under mixed precision they arrive as 16-bit elements: refreshComputeWeights)
                for (ModelChunk c : chunks) {
                    c.setForwardPreHook(ddp);
                }
            }
            this.ownedPieces = plan.sharded() ? AdamW.pieces(params, ddp.ownedRanges()) : null;
        } else {
            this.ddp = null;
            this.ownedPieces = null;
        }
    }

    /** Whether the fp32 master weights live sharded in the distributed optimizer (the model holds 16-bit weights). */
    static boolean shardedMaster(DataParallel dp, Precision precision) {
        return dp != null && dp.config().distributedOptimizer() && precision.isReduced();
    }

    /**
     * This model's data parallelism ({@link DataParallel} in its context): its gradient buckets, reduced during
     * the backward; null when the training loop reduces gradients itself.
     */
    public DistributedDataParallel dataParallel() {
        return ddp;
    }

    /** The FP8 recipe state (scales, amax history) under precision fp8, else null. */
    public Fp8State fp8() {
        return fp8;
    }

    public ModelConfig config() {
        return cfg;
    }

    /** The rank this model runs on: device, kernels, TP and PP groups, precision. */
    public RankContext context() {
        return ctx;
    }

    public Device device() {
        return device;
    }

    /** This rank's parameters: its stage's, with its shards of split parameters and whole replicated ones. */
    public ParameterSet params() {
        return params;
    }

    /**
     * The kernels this model runs on (one rank's): under BF16/FP16 the rounding wrapper, whose optimizer
     * and gradient utilities ({@code adamw}, {@code sumOfSquares}, {@code sum}, {@code scale}, {@code fill},
     * {@code zero}) are the wrapped fp32 kernels'.
     */
    public Kernels kernels() {
        return k;
    }

    /**
     * What this rank needs for micro-batches of {@code b} x {@code t} tokens, one at a time, from the model's
     * shape ({@link MemoryEstimate}), with the 16-bit element size of this device's compute weights.
     */
    public MemoryEstimate memoryEstimate(int b, int t) {
        return memoryEstimate(b, t, 1);
    }

    /** {@link #memoryEstimate(int, int)} for steps of {@code microBatches} micro-batches through this rank's schedule. */
    public MemoryEstimate memoryEstimate(int b, int t, int microBatches) {
        DataParallel dp = ctx.dataParallel();
        return MemoryEstimate.of(cfg, tp.size(), tp.sequenceParallel(), ep.size(), pp.layout(), pp.stage(), microBatches, b, t,
                precision, recompute, precision.format().bytes(), dp == null ? null : dp.config(), dp == null ? 1 : dp.size(),
                ctx.fp8Recipe(), device.storageOf(DType.FP8_E4M3).bytes(), MemoryEstimate.Context.of(cp));
    }

    /** The precision this model computes in. */
    public Precision precision() {
        return precision;
    }

    /**
     * The weights the layers compute from: {@link #params()}'s weights for FP32, else the 16-bit weights (BF16 or
     * F16 elements) as of the last pass. For tests and tools.
     */
    public Tensor computeWeights() {
        return staging == null ? params.weights() : half != null ? half : params.weights();
    }

    /** Bytes of the fp32 buffer the 16-bit weights are widened into, one unit at a time (0 in fp32). */
    public long weightStagingBytes() {
        return staging == null ? 0 : staging.bytes();
    }

    /**
     * Brings the 16-bit compute weights up to date with the fp32 master weights (nothing for FP32). With the
     * distributed optimizer the weight block is itself the 16-bit copy: kept in BF16/F16 elements from the
     * first pass on (the update rounds each rank's shard into it and the all-gather moves 16-bit elements);
     * when it holds fp32 values (set from outside: a load, an initialisation, {@link #finishParamGather}) they
     * are rounded into a new 16-bit block first, and the fp32 block goes back to the device.
     */
    private void refreshComputeWeights() {
        if (staging == null) {
            if (ddp != null) {
                ddp.startParamGather(); // overlap_param_gather: the buckets are gathered as the forward reaches them
            }
            return;
        }
        if (half != null) {
            k.round(half, params.weights(), params.numel(), precision.format());
        } else if (params.weights().dtype() == DType.F32) {
            completeParamGather(); // (a gather deferred over an fp32 block: none after a pass; completed to be sure)
            Tensor block = device.allocate(MemoryKind.PARAMETERS, precision.format(), params.numel());
            k.round(block, params.weights(), params.numel(), precision.format());
            device.release(params.replaceWeights(block));
        } else if (ddp != null) {
            ddp.startParamGather();
        }
        staging.invalidate(half != null ? half : params.weights());
    }

    /**
     * Completes the parameter all-gather deferred by the last optimizer step ({@code overlap_param_gather}; a
     * collective of the data-parallel group then), so the weight block is current in full; a pass leaves none
     * behind. Under the distributed optimizer with mixed precision, whose weight block holds 16-bit elements
     * during training, it also widens the block (exactly) to fp32 elements, so code outside a pass reads and
     * writes fp32 weights as in every other mode; the next pass rounds them into 16-bit elements again. Code
     * that reads or replaces the weights between a step and the next pass calls it first (checkpoint save and
     * load, {@link #initialize}, {@link TpCheckpoint#gatherFull}, {@code DistributedOptimizer.gatherMasterWeights}).
     * Nothing to do otherwise.
     */
    public void finishParamGather() {
        completeParamGather();
        if (staging != null && half == null && params.weights().dtype() != DType.F32) {
            Tensor block = device.allocate(MemoryKind.PARAMETERS, DType.F32, params.numel());
            k.widen(block, params.weights(), params.numel());
            device.release(params.replaceWeights(block));
        }
    }

    /** {@link DistributedDataParallel#finishParamGather}: the weight block current in full, in its element type. */
    private void completeParamGather() {
        if (ddp != null) {
            ddp.finishParamGather();
        }
    }

    public TensorParallel tensorParallel() {
        return tp;
    }

    public PipelineParallel pipeline() {
        return pp;
    }

    /** This rank's context-parallel group ({@link ContextParallel#none()} without context parallelism). */
    public ContextParallel contextParallel() {
        return cp;
    }

    /** Whether this rank needs batches: it embeds tokens (first stage) or computes the loss (last stage). */
    public boolean needsData() {
        return pp.holdsFirst() || pp.holdsLast();
    }

    /**
     * Times every pipeline operation of the following steps (null stops it): for benchmarks and profiles.
     * Called on the training thread after each operation.
     */
    public void setOpListener(StepRunner.OpListener listener) {
        runner.setListener(listener);
    }

    /** What each layer keeps for its backward; takes effect from the next pass. Never changes a result. */
    public void setRecompute(Recompute mode) {
        this.recompute = mode;
    }

    public Recompute recompute() {
        return recompute;
    }

    /**
     * Hidden dropout with probability {@code p} on both branch outputs of every block, during training passes
     * only (not {@link #loss} / {@link #logits}); p = 0 turns it off (the default). Masks are keyed by
     * ({@code seed}, micro-batch count, layer, global element), so every TP and PP layout drops the same
     * elements as one rank does ({@link DropoutRng}). {@code rowOffset} is the index of this data-parallel
     * replica's first token row in the global batch (dp rank x batch x sequence length): replicas then drop
     * different elements, exactly those a single rank drops over the global batch.
     */
    public void setDropout(float p, long seed, long rowOffset) {
        this.dropout = p > 0 ? new DropoutRng(p, seed) : null;
        this.dropoutRowOffset = rowOffset;
    }

    /** {@link #setDropout(float, long, long)} for a model without data parallelism. */
    public void setDropout(float p, long seed) {
        setDropout(p, seed, 0);
    }

    /**
     * Micro-batches trained so far: the counter that keys the dropout masks, saved in checkpoints so a
     * resumed run drops the same elements as an uninterrupted one.
     */
    public long trainSteps() {
        return trainSteps;
    }

    /** Restores {@link #trainSteps()} (resume from a checkpoint). */
    public void setTrainSteps(long steps) {
        this.trainSteps = steps;
    }

    /**
     * GPT-2-style initialisation, deterministic in {@code seed}: weights N(0, 0.02), the two residual output
     * projections N(0, 0.02 / sqrt(2 L)), biases 0, norm weights 1, padded vocabulary rows 0. Every rank
     * draws the whole model's values and keeps its part (its stage's layers, its TP shards), so any layout
     * starts exactly where one rank would, and the two copies of a tied embedding start equal.
     */
    public void initialize(long seed) {
        finishParamGather(); // a deferred gather must not overwrite the new weights afterwards
        if (tp.size() == 1 && pp.size() == 1 && ep.size() == 1) {
            Tensor host = device.toHost(params.weights()); // the block itself on the CPU device: no copy
            ModelInit.initialize(cfg, params.params(), host, seed);
            device.fromHost(params.weights(), host);
            return;
        }
        ParameterSet full = ModelLayout.layout(cfg, 1).buildWeightsOnly(device);
        Tensor host = device.toHost(full.weights());
        ModelInit.initialize(cfg, full.params(), host, seed);
        device.fromHost(full.weights(), host);
        TpShards.scatter(cfg, full, params, tp.rank(), tp.size(), ep.rank(), ep.size(), false);
        full.close();
    }

    /**
     * Allocates the buffers every rank shares for micro-batches of {@code b} sequences of {@code t} tokens
     * now (the first pass would otherwise); micro-batch slots come as the schedule needs them.
     */
    public void prepare(int b, int t) {
        shape(b, t);
    }

    private BlockActivations.Shape shape(int b, int t) {
        if (t > cfg.maxPositions()) {
            throw new IllegalArgumentException("sequence length " + t + " exceeds the model's " + cfg.maxPositions() + " positions");
        }
        // refuses a token count SP cannot split, or sequences CP cannot split
        BlockActivations.Shape s = BlockActivations.Shape.of(cfg, tp, ep.size(), cp, b, t);
        if (fp8 != null && fp8.layers() > 0) { // FP8 GEMMs need the token rows a multiple of 16
            int firstFp8 = 0;
            while (!ctx.fp8Recipe().fp8Layer(firstFp8, cfg.layers())) {
                firstFp8++;
            }
            org.sparkatron.precision.Fp8Linear.requireRows((long) s.n(), "layers." + firstFp8 + ".attn.qkv");
        }
        buffers.prepare(s, recompute);
        return s;
    }

    /**
     * Returns all of this model's device memory (parameters, gradients, activations, workspace) to the
     * device. The model must not be used afterwards.
     */
    public void close() {
        if (ddp != null) {
            ddp.close();
        }
        for (ModelChunk c : chunks) {
            c.close();
        }
        if (fp8 != null) {
            fp8.close();
        }
        buffers.release();
        ws.close();
        device.release(normScratch);
        device.release(scalars);
        if (moeStep != null) {
            device.release(moeStep.stats);
        }
        device.release(ropeCos);
        device.release(ropeSin);
        device.release(half);
        if (staging != null) {
            staging.close();
        }
        params.close();
    }

    /** Refuses ids outside the vocabulary, naming the sample and position, before any device work. */
    private void check(int[] samples, int b, int t) {
        if (samples == null) {
            return;
        }
        if (samples.length < b * (t + 1)) {
            throw new IllegalArgumentException("batch needs " + b * (t + 1) + " tokens, got " + samples.length);
        }
        for (int s = 0; s < b * (t + 1); s++) {
            int id = samples[s];
            if (id < 0 || id >= cfg.vocabSize()) {
                throw new IllegalArgumentException("token id " + id + " (sample " + s / (t + 1) + ", position " + s % (t + 1)
                        + ") is outside the vocabulary of " + cfg.vocabSize());
            }
        }
    }

    /**
     * One training step's forward and backward passes over {@code microBatches} (each {@code b} samples of
     * {@code t + 1} tokens; null on ranks that need no data, see {@link #needsData()}), through this rank's
     * pipeline schedule. Gradients are ADDED to {@code params().grads()} scaled by {@code gradScale} (1/m for
     * m micro-batches averages them); the last stage adds each micro-batch's mean cross-entropy (nats) times
     * {@code lossWeight} to {@code lossAcc[slot]} (an F64 device scalar), which is then summed over the
     * pipeline group so every stage holds it. Issues device work only. Call {@link #finishGradients()} once
     * after the step's passes.
     */
    public void forwardBackward(List<int[]> microBatches, int b, int t, float gradScale, Tensor lossAcc, int slot,
                                double lossWeight) {
        for (int[] s : microBatches) {
            check(s, b, t);
        }
        BlockActivations.Shape s = shape(b, t);
        refreshComputeWeights(); // every step starts here: the optimizer may have moved the master weights
        Schedule schedule = Schedule.of(pp.size(), pp.chunks(), microBatches.size());
        if (moeStep != null) {
            k.zero(moeStep.stats);
            moeStep.begin(true, gradScale, lossWeight);
        }
        if (ddp != null) {
            ddp.beginStep();
        }
        if (fp8 != null) {
            fp8.beginPass(true);
        }
        runner.run(schedule, microBatches, s, recompute, new StepRunner.Pass(true, gradScale, lossAcc, slot, lossWeight,
                trainSteps, new TransformerBlock.DropKey(dropout, 0, dropoutRowOffset)));
        completeParamGather();
        trainSteps += microBatches.size();
        sumOverPipeline(lossAcc.slice(slot, 1));
        averageOverContext(lossAcc.slice(slot, 1));
        if (moeStep != null) {
            sumOverPipeline(moeStep.stats); // each stage holds its own layers' share
        }
    }

    /**
     * Copies the last training pass's MoE statistics into {@code acc[slot, slot + 3)} (F64 device scalars):
     * the auxiliary load-balancing loss and the router z-loss without their coefficients, each the mean over
     * the model's MoE layers (and micro-batches, weighted as the loss), and the fraction of token
     * assignments dropped by capacity. Zeros for a dense model. Device work only.
     */
    public void moeStatistics(Tensor acc, int slot) {
        if (moeStep == null) {
            k.zero(acc.slice(slot, MoeStep.STATS));
        } else {
            device.copy(acc.slice(slot, MoeStep.STATS), moeStep.stats);
        }
    }

    /**
     * Host synchronisations a training pass of {@code microBatches} micro-batches makes besides the step's one
     * read: under expert parallelism without padding to capacity, one per MoE layer of this rank and
     * micro-batch (the all-to-all's split sizes come from the routing); otherwise none.
     */
    public int hostSyncsPerPass(int microBatches) {
        if (!cfg.isMoe() || ep.size() == 1 || cfg.moe().padToCapacity()) {
            return 0;
        }
        int layers = 0;
        for (ModelChunk c : chunks) {
            for (int i = c.layerStart(); i < c.layerStart() + c.layers(); i++) {
                layers += cfg.moe().isMoeLayer(i) ? 1 : 0;
            }
        }
        return layers * microBatches;
    }

    /**
     * The aux-loss-free expert bias's token counts of the last training step (F64 {@code [moeLayers, E]}, rows of
     * the layers this rank does not hold zero), for the trainer to sum over the data-parallel replicas before
     * {@link #updateExpertBias()}; null for a model without an expert bias.
     */
    public Tensor expertBiasTally() {
        return moeStep == null ? null : moeStep.tally;
    }

    /**
     * Megatron's aux-loss-free bias update of every MoE layer this rank holds, from the (replica-summed) tally:
     * {@code bias += rate * sign(mean count - count)}; the tally is zeroed. Device work only.
     */
    public void updateExpertBias() {
        if (moeStep == null || moeStep.tally == null) {
            return;
        }
        params.awaitReaders(); // the router biases are weights: an asynchronous checkpoint may still be copying them
        for (ModelChunk c : chunks) {
            for (int i = c.layerStart(); i < c.layerStart() + c.layers(); i++) {
                if (cfg.moe().isMoeLayer(i)) {
                    k.moe().expertBiasUpdate(params.weight("layers." + i + ".moe.router.b"), moeStep.tallyOf(cfg, i),
                            cfg.moe().experts(), cfg.moe().biasUpdateRate());
                }
            }
        }
    }

    /** This rank's expert-parallel groups. */
    public ExpertParallel expertParallel() {
        return ep;
    }

    /** One micro-batch: {@link #forwardBackward(List, int, int, float, Tensor, int, double)} of a list of one. */
    public void forwardBackward(int[] samples, int b, int t, float gradScale, Tensor lossAcc, int slot, double lossWeight) {
        forwardBackward(Collections.singletonList(samples), b, t, gradScale, lossAcc, slot, lossWeight);
    }

    /**
     * {@link #forwardBackward(int[], int, int, float, Tensor, int, double)} that synchronises and returns the
     * batch's mean cross-entropy in nats (the same on every rank). For tests and tools.
     */
    public double forwardBackward(int[] samples, int b, int t, float gradScale) {
        k.zero(scalars);
        forwardBackward(samples, b, t, gradScale, scalars, 0, 1.0);
        if (ddp != null) {
            ddp.finishGradSync(); // a complete step's gradients: reduced over the data-parallel group
        }
        return readScalar();
    }

    private void sumOverPipeline(Tensor scalar) {
        if (pp.size() > 1) {
            pp.group().allReduce(scalar, ReduceOp.SUM); // only the last stage's is not zero
        }
    }

    /** Each CP rank's loss is its own tokens' mean; they hold equal numbers of tokens, so the mean of means is the whole's. */
    private void averageOverContext(Tensor scalar) {
        if (cp.size() > 1) {
            cp.group().allReduce(scalar, ReduceOp.AVG);
        }
    }

    private double readScalar() {
        device.download(scalarsHost, scalars);
        return scalarsHost.getDouble(0);
    }

    /**
     * Completes the gradients after the last micro-batch of a step: under sequence parallelism the
     * replicated parameters that act on the residual stream (norms, position embeddings) saw only this
     * rank's rows, so their gradients are summed over the TP group (forgetting this is the classic SP bug);
     * with a tied embedding split over pipeline stages, the first and the last stage sum their embedding
     * gradients over the embedding group. Under precision fp8 it then ends the step's FP8 pass
     * ({@link Fp8State#finishPass()}: delayed scaling's amax reduction and scale update), after the data-parallel
     * gradient reduction so its MAX all-reduce never runs beside gradient buckets. Call it exactly once per step,
     * before the gradient norm.
     */
    public void finishGradients() {
        if (tp.sequenceParallel()) {
            long total = 0;
            for (ParameterSet.Param p : params.params()) {
                total += p.tp() == TpRole.SEQUENCE ? p.numel() : 0;
            }
            Tensor packed = ws.get("sequence.grads", 1, Math.toIntExact(total));
            long at = 0;
            for (ParameterSet.Param p : params.params()) {
                if (p.tp() == TpRole.SEQUENCE) {
                    device.copy(packed.slice(at, p.numel()), params.grad(p.name()));
                    at += p.numel();
                }
            }
            tp.group().allReduce(packed, ReduceOp.SUM);
            at = 0;
            for (ParameterSet.Param p : params.params()) {
                if (p.tp() == TpRole.SEQUENCE) {
                    device.copy(params.grad(p.name()), packed.slice(at, p.numel()));
                    at += p.numel();
                }
            }
        }
        if (tiedAcrossStages()) {
            pp.embeddingGroup().allReduce(params.grad("embed"), ReduceOp.SUM);
        }
        if (fp8 != null) {
            // delayed scaling: the step's amaxes reduced over TP and the replicas, then the scales for the next step;
            // here, after the gradient reduction, so no MAX all-reduce runs beside in-flight gradient buckets
            fp8.finishPass();
        }
    }

    /** A tied embedding whose input and output copies are on different pipeline stages. */
    private boolean tiedAcrossStages() {
        return cfg.tiedEmbeddings() && pp.size() > 1 && pp.embeddingGroup() != null && pp.embeddingGroup().size() > 1;
    }

    /**
     * The squared L2 norm of the whole model's gradient into {@code acc[slot]}, the same on every rank: split
     * parameters count on every TP rank (each holds a different slice), replicated ones only on TP rank 0
     * (Megatron's {@code param_is_not_tensor_parallel_duplicate}); the last stage's copy of a tied embedding
     * is not counted (Megatron's {@code param_is_not_shared}); the stages' sums are added over the pipeline
     * group. At TP = PP = 1 this is the sum of squares of the gradient block.
     */
    public void gradSquaredNorm(Tensor acc, int slot) {
        k.zero(normScratch);
        boolean skipEmbed = tiedAcrossStages() && !pp.holdsFirst();
        if (ownedPieces != null) { // distributed optimizer: this rank's shard of each parameter, then over the DP group
            for (AdamW.Piece piece : ownedPieces) {
                ParameterSet.Param p = params.params().get(piece.param());
                if ((p.tp() == TpRole.SPLIT || tp.rank() == 0) && !(skipEmbed && p.name().equals("embed"))) {
                    k.sumOfSquares(params.grads().slice(piece.offset(), piece.length()), normScratch, 0);
                }
            }
            ddp.sumOverGroups(normScratch);
        } else if (ep.size() > 1) {
            // dense gradients are the same on every EP rank (data-parallel for them): count them on EP rank 0;
            // experts differ per EP rank: count every rank's, then sum over the EP group
            for (ParameterSet.Param p : params.params()) {
                boolean expert = params.isExpert(p);
                if ((expert || ep.rank() == 0) && (p.tp() == TpRole.SPLIT || tp.rank() == 0)
                        && !(skipEmbed && p.name().equals("embed"))) {
                    k.sumOfSquares(params.grad(p.name()), normScratch, 0);
                }
            }
            ep.group().allReduce(normScratch, ReduceOp.SUM);
        } else if (tp.rank() == 0 && !skipEmbed) {
            k.sumOfSquares(params.grads(), normScratch, 0);
        } else {
            for (ParameterSet.Param p : params.params()) {
                if ((p.tp() == TpRole.SPLIT || tp.rank() == 0) && !(skipEmbed && p.name().equals("embed"))) {
                    k.sumOfSquares(params.grad(p.name()), normScratch, 0);
                }
            }
        }
        if (tp.size() > 1) {
            tp.group().allReduce(normScratch, ReduceOp.SUM);
        }
        sumOverPipeline(normScratch);
        device.copy(acc.slice(slot, 1), normScratch);
    }

    /** {@link #gradSquaredNorm(Tensor, int)}, synchronised and returned. For tests and tools. */
    public double gradSquaredNorm() {
        gradSquaredNorm(scalars, 0);
        return readScalar();
    }

    /**
     * Forward only: the mean cross-entropy in nats of a batch, on every rank; {@code lossesOut} (if non-null)
     * gets each token's ({@code [b, t]} in sequence order), on the last pipeline stage (it must be null
     * elsewhere). Under context parallelism the per-token losses are gathered over the CP group, so either every
     * rank of the group passes {@code lossesOut} or none does.
     */
    public double loss(int[] samples, int b, int t, float[] lossesOut) {
        if (lossesOut != null && !pp.holdsLast()) {
            throw new IllegalArgumentException("per-token losses exist on the last pipeline stage only");
        }
        check(samples, b, t);
        BlockActivations.Shape s = shape(b, t);
        refreshComputeWeights();
        k.zero(scalars);
        if (moeStep != null) {
            moeStep.begin(false, 0f, 0);
        }
        ModelChunk lastChunk = chunks.get(chunks.size() - 1);
        if (fp8 != null) {
            fp8.beginPass(false);
        }
        runner.run(new ForwardOnly(pp.size(), pp.chunks(), 1), Collections.singletonList(samples), s, recompute,
                new StepRunner.Pass(false, 0f, scalars, 0, 1.0, 0, TransformerBlock.DropKey.NONE));
        completeParamGather();
        if (lossesOut != null) {
            tokenLosses(lastChunk.lastForward().losses, s, lossesOut);
        }
        sumOverPipeline(scalars);
        averageOverContext(scalars);
        return readScalar();
    }

    /** This rank's per-token losses, or under CP every rank's gathered and put in sequence order, into {@code out}. */
    private void tokenLosses(Tensor losses, BlockActivations.Shape s, float[] out) {
        int n = s.n();
        int size = cp.size();
        Tensor all = losses.slice(0, n);
        if (size > 1) {
            all = ws.get("cp.losses", size, n).view((long) size * n);
            cp.group().allGather(losses.slice(0, n), all);
        }
        ByteBuffer host = ByteBuffer.allocateDirect(4 * size * n).order(ByteOrder.nativeOrder());
        device.download(host, all);
        FloatBuffer f = host.asFloatBuffer();
        if (size == 1) {
            f.get(out, 0, n);
            return;
        }
        for (int j = 0; j < size; j++) {
            int[] pos = ContextParallel.positions(s.seq(), size, j);
            for (int bi = 0; bi < s.b(); bi++) {
                for (int l = 0; l < s.t(); l++) {
                    out[bi * s.seq() + pos[l]] = f.get(j * n + bi * s.t() + l);
                }
            }
        }
    }

    /**
     * Forward only: logits [b*t, vocabSize] (padding removed) for samples of t+1 tokens, gathered from the
     * vocabulary shards onto every TP rank. Without pipelining or context parallelism only. For tests and tools.
     */
    public float[] logits(int[] samples, int b, int t) {
        if (pp.size() > 1 || cp.size() > 1) {
            throw new UnsupportedOperationException("logits() runs without pipelining or context parallelism; use loss() "
                    + "for evaluation under PP or CP");
        }
        check(samples, b, t);
        BlockActivations.Shape s = shape(b, t);
        refreshComputeWeights();
        ModelChunk chunk = chunks.get(0);
        if (moeStep != null) {
            moeStep.begin(false, 0f, 0);
        }
        MicroBatch mb = chunk.acquire(s, recompute);
        try {
            runner.upload(mb.tokens, samples, s);
            k.zero(scalars);
            if (fp8 != null) {
                fp8.beginPass(false);
            }
            chunk.forward(mb, false, 0f, scalars, 0, 1.0);
            completeParamGather();
            int n = s.n();
            int v = cfg.vocabSize();
            int vocabLocal = cfg.paddedVocab(tp.size()) / tp.size();
            int vp = vocabLocal * tp.size();
            int rows0 = RankBuffers.logitsRows(n, vocabLocal);
            float[] out = new float[Math.multiplyExact(n, v)];
            Tensor local = ws.get("logits.local", rows0, vocabLocal);
            for (int r0 = 0; r0 < n; r0 += rows0) {
                int rows = Math.min(rows0, n - r0);
                if (staging != null) {
                    staging.use(cfg.tiedEmbeddings() ? "embed" : "head"); // the forward left it widened; to be sure
                }
                k.linearForward(local, mb.headX.narrowRows(r0, rows), compute.weight(cfg.tiedEmbeddings() ? "embed" : "head"), null,
                        rows, cfg.hidden(), vocabLocal);
                Tensor full = ws.get("logits.full", rows, vp);
                Mapping gather = new Mappings.GatherFromTensorRegion(ctx, rows, vocabLocal);
                gather.forward(local.slice(0, (long) rows * vocabLocal), full);
                gather.close();
                ByteBuffer host = ByteBuffer.allocateDirect(4 * rows * vp).order(ByteOrder.nativeOrder());
                device.download(host, full);
                FloatBuffer z = host.asFloatBuffer();
                for (int r = 0; r < rows; r++) {
                    z.get(r * vp, out, (r0 + r) * v, v);
                }
            }
            return out;
        } finally {
            chunk.release(mb);
        }
    }
}
