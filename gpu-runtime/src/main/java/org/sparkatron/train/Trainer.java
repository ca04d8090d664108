package org.sparkatron.train;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.MemoryEstimate;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.optim.DistributedOptimizer;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.optim.GradClip;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.precision.DynamicGradScaler;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The training loop of one rank: pull a batch, forward and backward (with optional gradient accumulation
 * over micro-batches), complete the tensor-parallel gradients ({@link Transformer#finishGradients}),
 * synchronise gradients with the data-parallel replicas ({@link GradientSync}), clip by the global norm
 * over the whole (tensor-parallel) model, step AdamW on the schedule.
 *
 * <p>Precision follows the model ({@link Transformer#precision()}): AdamW always updates the fp32 master
 * weights from the fp32 gradients with fp32 moments. Under FP16 the loss is scaled by a
 * {@link DynamicGradScaler}; the gradients are unscaled before the norm, and a step whose gradients hold
 * an infinity or NaN (the global norm is then non-finite, identically on every rank) is skipped: no weight,
 * moment or step-count change, reported as {@link StepMetrics#skipped()}. An overflow at the minimum
 * scale throws (the model diverged; skipping forever would never finish). Under tensor and context parallelism
 * every rank of a TP x CP group must be given the same batches (each CP rank keeps its chunks of every
 * sequence), and under context parallelism the {@link GradientSync} must average over the DP x CP group.
 *
 * <p>Synchronisation: a step issues its work to the model's device and waits for it exactly once, when it
 * reads the loss and the squared gradient norm together (one download of two F64 device scalars); the
 * overflow flag is the norm's finiteness, and clipping and AdamW are issued after that read with
 * host-computed factors. {@link #SYNCS_PER_STEP} says so and a test counts it. After the first step a step
 * allocates no device memory (the trainer prepares the model's activations for its batch shape at once).
 * Single-threaded (kernels may use BLAS threads); deterministic given the model, data and options.
 */
public final class Trainer {
    /** What to train and how. */
    public record Options(int batch, int microBatches, LrSchedule schedule, float beta1, float beta2, float eps,
                          float weightDecay, float gradClip) {
        public Options {
            if (batch < 1 || microBatches < 1) {
                throw new IllegalArgumentException("batch (" + batch + ") and micro-batches (" + microBatches + ") must be >= 1");
            }
        }

        /** nanoGPT / Megatron defaults: betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0. */
        public static Options defaults(int batch, LrSchedule schedule) {
            return new Options(batch, 1, schedule, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f);
        }
    }

    /**
     * One step's figures. {@code gradNorm} is before clipping (and after unscaling). {@code step} counts the
     * optimizer updates applied so far, so a {@code skipped} step (FP16 overflow: nothing was updated)
     * repeats the previous step's number. {@code lossScale} is the scale this step ran with (1 unless FP16).
     */
    public record StepMetrics(long step, double loss, double lr, double gradNorm, double tokensPerSecond, double seconds,
                              boolean skipped, double lossScale, MoeMetrics moe) {
        /** An applied step without loss scaling. */
        public StepMetrics(long step, double loss, double lr, double gradNorm, double tokensPerSecond, double seconds) {
            this(step, loss, lr, gradNorm, tokensPerSecond, seconds, false, 1, null);
        }

        /** A step of a dense model. */
        public StepMetrics(long step, double loss, double lr, double gradNorm, double tokensPerSecond, double seconds,
                           boolean skipped, double lossScale) {
            this(step, loss, lr, gradNorm, tokensPerSecond, seconds, skipped, lossScale, null);
        }

        /**
         * One JSON object; {@code loss_scale} and {@code skipped} appear only under loss scaling (FP16), the MoE
         * figures ({@code aux_loss}, {@code z_loss}, {@code dropped}) only for models with experts.
         */
        public String toJson() {
            String base = String.format(java.util.Locale.ROOT,
                    "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"step_s\": %.4f",
                    step, loss, lr, gradNorm, tokensPerSecond, seconds);
            if (moe != null) {
                base += String.format(java.util.Locale.ROOT, ", \"aux_loss\": %.6f, \"z_loss\": %.6f, \"dropped\": %.6f",
                        moe.auxLoss(), moe.zLoss(), moe.dropped());
            }
            if (lossScale == 1 && !skipped) {
                return base + "}";
            }
            return base + String.format(java.util.Locale.ROOT, ", \"loss_scale\": %.6g, \"skipped\": %b}", lossScale, skipped);
        }
    }

    /**
     * A step's mixture-of-experts figures, averaged over micro-batches and data-parallel replicas as the loss:
     * Megatron's auxiliary load-balancing loss and the router z-loss, each without its coefficient and the mean
     * over the MoE layers, and the fraction of token assignments dropped by expert capacity.
     */
    public record MoeMetrics(double auxLoss, double zLoss, double dropped) {
    }

    /**
     * Host synchronisations per optimizer step: the one read of loss, gradient norm and overflow. A model
     * with experts under expert parallelism without padding to capacity adds its MoE layers' count reads
     * ({@link #syncsPerStep()}).
     */
    public static final int SYNCS_PER_STEP = 1;
    private static final int LOSS = 0;
    private static final int MOE = 1;  // aux, z, dropped: averaged over DP with the loss
    private static final int NORM = 4;

    private final Transformer model;
    private final Device device;
    private final Tensor stepScalars; // F64 [2] on the device: loss, squared gradient norm
    private final ByteBuffer stepScalarsHost = ByteBuffer.allocateDirect(40).order(ByteOrder.nativeOrder());
    private final SampleSource data;
    private final Options opt;
    private final AdamW adam;
    private final int seqLen;
    private final List<int[]> microBatches = new ArrayList<>();
    private final GradientSync sync;
    private final DistributedDataParallel ddp;  // the model's data parallelism, or null
    private final DistributedOptimizer distOpt; // ZeRO-1, or null
    private final List<Tensor> gradViews;       // what clipping and unscaling touch: the block, or this rank's shard
    private final DynamicGradScaler scaler; // FP16 only

    /** A rank training alone. */
    public Trainer(Transformer model, SampleSource data, Options opt) {
        this(model, data, opt, GradientSync.NONE);
    }

    /** With FP16 models, loss scaling uses {@link DynamicGradScaler.Config#defaults()}. */
    public Trainer(Transformer model, SampleSource data, Options opt, GradientSync sync) {
        this(model, data, opt, sync, model.precision().needsLossScaling() ? DynamicGradScaler.Config.defaults() : null);
    }

    /**
     * @param lossScaling the loss scaler's settings: required for an FP16 model, refused (must be null) for
     *                    FP32/BF16, whose range needs no scaling
     */
    public Trainer(Transformer model, SampleSource data, Options opt, GradientSync sync, DynamicGradScaler.Config lossScaling) {
        Precision p = model.precision();
        if (p.needsLossScaling() != (lossScaling != null)) {
            throw new IllegalArgumentException(p.needsLossScaling() ? "an fp16 model needs loss scaling settings"
                    : "loss scaling applies to fp16 only; this model computes in " + p.label());
        }
        if (model.contextParallel().size() > 1 && sync == GradientSync.NONE && model.dataParallel() == null) {
            throw new IllegalArgumentException("context parallelism (cp " + model.contextParallel().size() + ") needs the gradients "
                    + "averaged over the data-parallel x context-parallel group: build the model with a DataParallel over the "
                    + "DP_CP group, or pass a GradientSync over it");
        }
        this.scaler = lossScaling == null ? null : new DynamicGradScaler(lossScaling);
        this.model = model;
        this.device = model.device();
        this.stepScalars = device.allocate(MemoryKind.WORKSPACE, DType.F64, 5);
        this.ddp = model.dataParallel();
        if (ddp != null && sync != GradientSync.NONE && sync != ddp) {
            throw new IllegalArgumentException("this model reduces its gradients itself (data parallelism in its RankContext); "
                    + "give the trainer no GradientSync");
        }
        this.sync = ddp != null ? ddp : sync;
        this.data = data;
        this.opt = opt;
        this.seqLen = data.sampleLength() - 1;
        if (ddp != null && ddp.sharded()) {
            this.distOpt = new DistributedOptimizer(model, opt.beta1(), opt.beta2(), opt.eps(), opt.weightDecay());
            this.adam = distOpt.adam();
            this.gradViews = ddp.ownedGradients();
        } else {
            this.distOpt = null;
            this.adam = new AdamW(model.params(), model.kernels(), opt.beta1(), opt.beta2(), opt.eps(), opt.weightDecay());
            this.gradViews = List.of(model.params().grads());
        }
        for (int m = 0; m < opt.microBatches(); m++) {
            microBatches.add(model.needsData() ? new int[opt.batch() * data.sampleLength()] : null);
        }
        if (model.fp8() != null) {
            model.fp8().setReplicaMax(this.sync::maxOverReplicas); // delayed scaling's amaxes: MAX over TP (the model) and DP
        }
        model.prepare(opt.batch(), seqLen);
    }

    /** The model this trainer updates (this rank's shard). */
    public Transformer model() {
        return model;
    }

    /** The source the batches come from; its {@link SampleSource#consumed()} is this rank's data position. */
    public SampleSource data() {
        return data;
    }

    /** The optimizer state: the whole model's, or with the distributed optimizer this rank's shard. */
    public AdamW optimizer() {
        return adam;
    }

    /** The distributed optimizer (ZeRO-1), or null when every rank keeps the whole optimizer state. */
    public DistributedOptimizer distributedOptimizer() {
        return distOpt;
    }

    /** The loss scaler (FP16), or null. */
    public DynamicGradScaler lossScaler() {
        return scaler;
    }

    /** Runs one optimizer step (step numbers count from 1). */
    public StepMetrics step() {
        long t0 = System.nanoTime();
        model.params().zeroGrads();
        model.kernels().zero(stepScalars);
        float lossScale = scaler == null ? 1f : (float) scaler.scale();
        for (int[] mb : microBatches) {
            for (int s = 0; mb != null && s < opt.batch(); s++) { // stages between the first and the last need no data
                if (!data.next(mb, s * data.sampleLength())) {
                    throw new IllegalStateException("data source ran out after " + data.consumed() + " samples");
                }
            }
        }
        // the micro-batches through this rank's pipeline schedule; the loss is summed over the pipeline group
        model.forwardBackward(microBatches, opt.batch(), seqLen, lossScale / opt.microBatches(), stepScalars, LOSS,
                1.0 / opt.microBatches());
        // an asynchronous checkpoint started after the last step may still be copying the weights and moments
        // (the forward and backward only read them): nothing below changes them before it is done
        model.params().awaitReaders();
        model.moeStatistics(stepScalars, MOE);
        // data parallelism: waits for the buckets reduced during the backward (Megatron's finish_grad_sync), then,
        // as Megatron's finalize_model_grads, the SP norm/position gradients over the TP group and a tied embedding
        // over its stages (sums: their order does not matter; with the distributed optimizer the TP ranks and the
        // two embedding stages shard alike, so the sums see matching shards)
        sync.syncGradients(model.params().grads());
        model.finishGradients();
        // the loss, and for MoE models the MoE figures beside it (a dense model's average stays one element)
        sync.averageScalars(stepScalars.slice(LOSS, model.config().isMoe() ? NORM : 1));
        // the aux-loss-free expert bias: the step's global tokens per expert move it (Megatron does this in
        // finalize_model_grads, so also on a step the loss scaler then skips); AdamW leaves it alone (no gradient)
        Tensor tally = model.expertBiasTally();
        if (tally != null) {
            sync.sumScalars(tally);
            model.updateExpertBias();
        }
        if (scaler != null) {
            for (Tensor g : gradViews) {
                model.kernels().scale(g, (float) (1 / lossScale)); // exact for power-of-two scales
            }
        }
        model.gradSquaredNorm(stepScalars, NORM); // TP-replicated parameters counted once
        device.download(stepScalarsHost, stepScalars); // the step's one synchronisation
        double loss = stepScalarsHost.getDouble(8 * LOSS);
        double norm = Math.sqrt(stepScalarsHost.getDouble(8 * NORM));
        MoeMetrics moe = model.config().isMoe() ? new MoeMetrics(stepScalarsHost.getDouble(8 * MOE),
                stepScalarsHost.getDouble(8 * (MOE + 1)), stepScalarsHost.getDouble(8 * (MOE + 2))) : null;
        if (scaler != null) {
            // An inf or NaN in any gradient element on any rank makes the global norm non-finite on all ranks
            // (TP sums the norm, DP averaged the gradients), so every rank takes the same decision.
            boolean overflow = !Double.isFinite(norm) || !Double.isFinite(loss);
            if (overflow && scaler.atMinimum()) {
                throw new DivergedException("step " + (adam.step() + 1) + ": fp16 gradients overflow even at the minimum loss scale "
                        + scaler.scale() + " (loss " + loss + ", gradient norm " + norm + "); the model diverged or needs bf16/fp32");
            }
            scaler.update(overflow);
            if (overflow) {
                double secs = (System.nanoTime() - t0) / 1e9;
                long tokens = (long) opt.batch() * opt.microBatches() * seqLen;
                return new StepMetrics(adam.step(), loss, opt.schedule().at(adam.step()), norm, tokens / secs, secs, true, lossScale,
                        moe);
            }
        }
        if (!Double.isFinite(loss) || !Double.isFinite(norm)) {
            throw new DivergedException("step " + (adam.step() + 1) + ": non-finite loss " + loss + " or gradient norm "
                    + norm + "; the learning rate may be too high");
        }
        // clipping folded into the update: the optimizer scales each gradient as it reads it (one pass over the
        // gradients fewer), and the gradients end up clipped as GradClip.clip would leave them. Its pieces cover
        // gradViews: the whole block, or this rank's shard, each parameter's range (padding holds zeros).
        float clip = GradClip.coefficient(norm, opt.gradClip());
        double lr = opt.schedule().at(adam.step());
        if (distOpt != null) {
            distOpt.update((float) lr, clip); // this rank's shard, then the all-gather of the parameters
        } else {
            adam.update((float) lr, clip);
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        long tokens = (long) opt.batch() * opt.microBatches() * seqLen;
        return new StepMetrics(adam.step(), loss, lr, norm, tokens / secs, secs, false, lossScale, moe);
    }

    /**
     * Host synchronisations one {@link #step()} makes: {@link #SYNCS_PER_STEP}, plus under expert parallelism
     * without padding to capacity one per MoE layer of this rank and micro-batch (the all-to-all's split sizes,
     * {@link Transformer#hostSyncsPerPass}).
     */
    public int syncsPerStep() {
        return SYNCS_PER_STEP + model.hostSyncsPerPass(opt.microBatches());
    }

    /**
     * This rank's memory: the device's measured figures (bytes requested, by kind) beside the figures the
     * model's shape predicts ({@link MemoryEstimate}), as one JSON object. Complete after the first step,
     * when every lazily sized buffer exists.
     */
    public String memoryReport() {
        return model.memoryEstimate(opt.batch(), seqLen, opt.microBatches()).toJson(device.memory());
    }

    /** Returns the trainer's device memory (optimizer state, step scalars); the model stays the caller's. */
    public void close() {
        adam.close();
        device.release(stepScalars);
    }
}
