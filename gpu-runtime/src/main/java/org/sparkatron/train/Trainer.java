package org.sparkatron.train;

import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.optim.GradClip;
import org.sparkatron.optim.LrSchedule;

/**
 * The training loop of one rank: pull a batch, forward and backward (with optional gradient accumulation
 * over micro-batches), complete the tensor-parallel gradients ({@link Transformer#finishGradients}),
 * synchronise gradients with the data-parallel replicas ({@link GradientSync}), clip by the global norm
 * over the whole (tensor-parallel) model, step AdamW on the schedule. Under tensor parallelism every rank
 * of a TP group must be given the same batches. Blocking, single-threaded (kernels may use BLAS threads);
 * deterministic given the model, data and options.
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

    /** One step's figures. {@code gradNorm} is before clipping. */
    public record StepMetrics(long step, double loss, double lr, double gradNorm, double tokensPerSecond, double seconds) {
        public String toJson() {
            return String.format(java.util.Locale.ROOT,
                    "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"step_s\": %.4f}",
                    step, loss, lr, gradNorm, tokensPerSecond, seconds);
        }
    }

    private final Transformer model;
    private final SampleSource data;
    private final Options opt;
    private final AdamW adam;
    private final int seqLen;
    private final int[] batchTokens;
    private final GradientSync sync;

    /** A rank training alone. */
    public Trainer(Transformer model, SampleSource data, Options opt) {
        this(model, data, opt, GradientSync.NONE);
    }

    public Trainer(Transformer model, SampleSource data, Options opt, GradientSync sync) {
        this.model = model;
        this.sync = sync;
        this.data = data;
        this.opt = opt;
        this.seqLen = data.sampleLength() - 1;
        this.adam = new AdamW(model.params(), model.kernels(), opt.beta1(), opt.beta2(), opt.eps(), opt.weightDecay());
        this.batchTokens = new int[opt.batch() * data.sampleLength()];
    }

    /** The model this trainer updates (this rank's shard). */
    public Transformer model() {
        return model;
    }

    /** The source the batches come from; its {@link SampleSource#consumed()} is this rank's data position. */
    public SampleSource data() {
        return data;
    }

    public AdamW optimizer() {
        return adam;
    }

    /** Runs one optimizer step (step numbers count from 1). */
    public StepMetrics step() {
        long t0 = System.nanoTime();
        model.params().zeroGrads();
        double loss = 0;
        for (int m = 0; m < opt.microBatches(); m++) {
            for (int s = 0; s < opt.batch(); s++) {
                if (!data.next(batchTokens, s * data.sampleLength())) {
                    throw new IllegalStateException("data source ran out after " + data.consumed() + " samples");
                }
            }
            loss += model.forwardBackward(batchTokens, opt.batch(), seqLen, 1f / opt.microBatches()) / opt.microBatches();
        }
        model.finishGradients(); // sequence-parallel norm/position gradients summed over the TP group
        sync.syncGradients(model.params().grads());
        loss = sync.averageScalar(loss);
        double norm = Math.sqrt(model.gradSquaredNorm()); // TP-replicated parameters counted once
        if (!Double.isFinite(loss) || !Double.isFinite(norm)) {
            throw new IllegalStateException("step " + (adam.step() + 1) + ": non-finite loss " + loss + " or gradient norm "
                    + norm + "; the learning rate may be too high");
        }
        GradClip.clip(model.kernels(), model.params().grads(), norm, opt.gradClip());
        double lr = opt.schedule().at(adam.step());
        adam.update((float) lr);
        double secs = (System.nanoTime() - t0) / 1e9;
        long tokens = (long) opt.batch() * opt.microBatches() * seqLen;
        return new StepMetrics(adam.step(), loss, lr, norm, tokens / secs, secs);
    }
}
