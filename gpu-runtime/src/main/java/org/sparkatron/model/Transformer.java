package org.sparkatron.model;

import java.util.ArrayList;
import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.device.DeviceMemoryException;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.parallel.AttentionCore;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.GradBuffer;
import org.sparkatron.parallel.PipelineLayout;
import org.sparkatron.parallel.PipelineParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.Workspace;
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
 * <p>Its parts: {@link ModelLayout} (the layout and its validation), {@link ModelChunk}s (the layers),
 * {@code ComputeWeights} (the 16-bit compute copy and the deferred parameter all-gather), {@code ModelPasses}
 * (what runs around the schedule in a training or forward-only pass, and the pass settings) and
 * {@code ModelGradients} (data parallelism, completing a step's gradients, the gradient norm). This class builds
 * them in order and is the API over them.
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
    private final ComputeWeights weights; // what the layers compute from: the fp32 master or its 16-bit copy
    private final Workspace ws;
    private final Tensor ropeCos; // [maxPos, hd/2] (Llama only)
    private final Tensor ropeSin;
    private final List<ModelChunk> chunks = new ArrayList<>();
    private final RankBuffers buffers;
    private final StepRunner runner;
    private final ModelGradients gradients; // data parallelism, the step's gradient completion and norm
    private final ModelPasses passes;       // the training and forward-only passes around the schedule
    private final Fp8State fp8;       // precision fp8: the recipe state of the blocks' FP8 GEMMs; else null
    private final ExpertParallel ep;
    private final MoeStep moeStep;    // MoE models: the pass settings and statistics the MoE layers share

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
        ModelLayout.validateRank(cfg, ctx);
        this.pp = ctx.pipeline() != null ? ctx.pipeline() : PipelineParallel.none(cfg.layers());
        this.ep = ctx.expertParallel();
        this.cfg = cfg;
        this.ctx = ctx;
        this.device = ctx.device();
        this.precision = ctx.precision();
        this.k = ctx.kernels();
        this.tp = ctx.tp();
        this.cp = ctx.contextParallel();
        ParameterSet.Builder layout = ModelLayout.layout(cfg, tp.size(), ep.size(), pp.layout(), pp.stage());
        DataParallel dp = ctx.dataParallel();
        GradBuffer plan = null;
        if (dp != null) { // Megatron's gradient buffer order and padding
            plan = ModelLayout.gradBuffer(cfg, layout.params(), pp.layout(), pp.stage(), dp.config(), dp.size());
            layout = layout.relayout(plan.offsets(), plan.numel());
        }
        // With the distributed optimizer under mixed precision the fp32 master weights are sharded (the
        // optimizer keeps this rank's shard); the model's weight block is then its 16-bit copy.
        boolean separateCompute = precision.isReduced() && !ComputeWeights.shardedMaster(dp, precision);
        long weightBytes = Math.multiplyExact(layout.numel(), 4L) * 2 + (separateCompute ? 2 * layout.numel() : 0)
                + (precision.isReduced() ? 4 * WeightStaging.scratchElements(layout.params()) : 0);
        if (weightBytes > device.capacityBytes()) {
            throw new DeviceMemoryException(device.name(), cfg.family().name().toLowerCase(java.util.Locale.ROOT) + " model of "
                    + layout.numel() + " parameters per rank (weights and gradients"
                    + (separateCompute ? ", and a 16-bit compute copy" : "") + ")", weightBytes, device.capacityBytes());
        }
        if (precision == Precision.FP8) {
            ModelLayout.validateFp8(cfg, ctx);
        }
        this.params = layout.build(device);
        this.weights = new ComputeWeights(params, precision, device, k, separateCompute);
        this.ws = new Workspace(device);
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
            chunks.add(new ModelChunk(cfg, ctx, params, weights.compute(), weights.staging(), pl.firstLayer(pp.stage(), c), pl.endLayer(pp.stage(), c),
                    pl.isFirst(pp.stage(), c), pl.isLast(pp.stage(), c), ropeCos, ropeSin, ws, buffers, moeStep, fp8,
                    fp8Index));
        }
        this.runner = new StepRunner(device, pp, cp, chunks);
        this.gradients = new ModelGradients(cfg, params, device, k, tp, pp, ep, ws, fp8, dp, plan, runner, chunks);
        weights.gatherWith(gradients.dataParallel());
        this.passes = new ModelPasses(cfg, ctx, pp, chunks, runner, buffers, ws, weights, gradients.dataParallel(), moeStep, fp8);
    }

    /**
     * This model's data parallelism ({@link DataParallel} in its context): its gradient buckets, reduced during
     * the backward; null when the training loop reduces gradients itself.
     */
    public DistributedDataParallel dataParallel() {
        return gradients.dataParallel();
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
                precision, passes.recompute(), precision.format().bytes(), dp == null ? null : dp.config(),
                dp == null ? 1 : dp.size(), ctx.fp8Recipe(), device.storageOf(DType.FP8_E4M3).bytes(), MemoryEstimate.Context.of(cp));
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
        return weights.current();
    }

    /** Bytes of the fp32 buffer the 16-bit weights are widened into, one unit at a time (0 in fp32). */
    public long weightStagingBytes() {
        return weights.stagingBytes();
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
        weights.finishParamGather();
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
        passes.setRecompute(mode);
    }

    public Recompute recompute() {
        return passes.recompute();
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
        passes.setDropout(p, seed, rowOffset);
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
        return passes.trainSteps();
    }

    /** Restores {@link #trainSteps()} (resume from a checkpoint). */
    public void setTrainSteps(long steps) {
        passes.setTrainSteps(steps);
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
        passes.shape(b, t);
    }

    /**
     * Returns all of this model's device memory (parameters, gradients, activations, workspace) to the
     * device. The model must not be used afterwards.
     */
    public void close() {
        gradients.close(); // first: the data-parallel lane may still be reducing into the gradient block
        for (ModelChunk c : chunks) {
            c.close();
        }
        if (fp8 != null) {
            fp8.close();
        }
        buffers.release();
        ws.close();
        passes.close();
        if (moeStep != null) {
            device.release(moeStep.stats);
        }
        device.release(ropeCos);
        device.release(ropeSin);
        weights.close();
        params.close();
    }

    // ---- the passes (ModelPasses) and the step's gradients (ModelGradients) ----

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
        passes.forwardBackward(microBatches, b, t, gradScale, lossAcc, slot, lossWeight);
    }

    /** One micro-batch: {@link #forwardBackward(List, int, int, float, Tensor, int, double)} of a list of one. */
    public void forwardBackward(int[] samples, int b, int t, float gradScale, Tensor lossAcc, int slot, double lossWeight) {
        passes.forwardBackward(samples, b, t, gradScale, lossAcc, slot, lossWeight);
    }

    /**
     * {@link #forwardBackward(int[], int, int, float, Tensor, int, double)} that synchronises and returns the
     * batch's mean cross-entropy in nats (the same on every rank). For tests and tools.
     */
    public double forwardBackward(int[] samples, int b, int t, float gradScale) {
        return passes.forwardBackward(samples, b, t, gradScale);
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
        gradients.finish();
    }

    /**
     * The squared L2 norm of the whole model's gradient into {@code acc[slot]}, the same on every rank: split
     * parameters count on every TP rank (each holds a different slice), replicated ones only on TP rank 0
     * (Megatron's {@code param_is_not_tensor_parallel_duplicate}); the last stage's copy of a tied embedding
     * is not counted (Megatron's {@code param_is_not_shared}); the stages' sums are added over the pipeline
     * group. At TP = PP = 1 this is the sum of squares of the gradient block.
     */
    public void gradSquaredNorm(Tensor acc, int slot) {
        gradients.squaredNorm(acc, slot);
    }

    /** {@link #gradSquaredNorm(Tensor, int)}, synchronised and returned. For tests and tools. */
    public double gradSquaredNorm() {
        gradients.squaredNorm(passes.scalars(), 0);
        return passes.readScalar();
    }

    /**
     * Forward only: the mean cross-entropy in nats of a batch, on every rank; {@code lossesOut} (if non-null)
     * gets each token's ({@code [b, t]} in sequence order), on the last pipeline stage (it must be null
     * elsewhere). Under context parallelism the per-token losses are gathered over the CP group, so either every
     * rank of the group passes {@code lossesOut} or none does.
     */
    public double loss(int[] samples, int b, int t, float[] lossesOut) {
        return passes.loss(samples, b, t, lossesOut);
    }

    /**
     * Forward only: logits [b*t, vocabSize] (padding removed) for samples of t+1 tokens, gathered from the
     * vocabulary shards onto every TP rank. Without pipelining or context parallelism only. For tests and tools.
     */
    public float[] logits(int[] samples, int b, int t) {
        return passes.logits(samples, b, t);
    }

    // ---- mixture of experts: the statistics and the expert bias of this rank's MoE layers (MoeStep) ----

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
        return MoeStep.heldLayers(cfg, chunks).size() * microBatches;
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
        if (moeStep != null) {
            moeStep.updateExpertBias(cfg, chunks, k.moe());
        }
    }

    /** This rank's expert-parallel groups. */
    public ExpertParallel expertParallel() {
        return ep;
    }
}
