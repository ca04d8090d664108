package org.sparkatron.train;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Locale;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.Transformer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Evaluation on the validation split, Megatron's {@code --eval-iters}: {@code iters} global batches,
 * forward only ({@link Transformer#loss}, no dropout), each replica scoring its share of every batch as in
 * training, the mean loss averaged over the data-parallel replicas ({@link GradientSync#averageScalars}),
 * reported with its perplexity. Like Megatron, successive evaluations continue through the validation
 * samples (the source is not rewound), so a run's evaluations together see
 * {@code evaluations x iters x global_batch} distinct samples, repeating the split over epochs only when it
 * is smaller than that.
 *
 * <p>A collective: every rank of the layout calls {@link #run} at the same step (tensor-parallel peers
 * receive the same samples, e.g. from a {@code TpBroadcastSource}). Training thread only; blocking.
 */
public final class Evaluator {
    /** One evaluation: mean validation loss (nats) over {@code samples} samples at training step {@code step}. */
    public record Evaluation(long step, double loss, int iters, long samples, double seconds) {
        public double perplexity() {
            return Math.exp(loss);
        }

        /** One JSON object, {@code "kind": "eval"}. */
        public String toJson() {
            return String.format(Locale.ROOT, "{\"kind\": \"eval\", \"step\": %d, \"valid_loss\": %.6f, \"valid_ppl\": %.6g, "
                    + "\"eval_iters\": %d, \"eval_samples\": %d, \"eval_s\": %.4f}", step, loss, perplexity(), iters, samples, seconds);
        }

        /** The console line. */
        public String describe() {
            return String.format(Locale.ROOT, "validation at step %d | loss %.4f | ppl %.3f | %d samples in %.1f s", step, loss, perplexity(),
                    samples, seconds);
        }

        /** Parses {@link #toJson}'s object. */
        public static Evaluation fromJson(com.fasterxml.jackson.databind.JsonNode n) {
            return new Evaluation(n.path("step").asLong(), n.path("valid_loss").asDouble(), n.path("eval_iters").asInt(),
                    n.path("eval_samples").asLong(), n.path("eval_s").asDouble());
        }
    }

    private final Transformer model;
    private final SampleSource data;
    private final int microBatch;
    private final int microBatches;
    private final GradientSync sync;
    private final int replicas;
    private final int[] tokens;
    private final ByteBuffer meanHost = ByteBuffer.allocateDirect(8).order(ByteOrder.nativeOrder());

    /**
     * @param microBatch   samples per forward pass on this rank
     * @param microBatches forward passes per global batch on this replica (global batch = micro x this x replicas)
     * @param replicas     data-parallel replicas (for the sample count only)
     */
    public Evaluator(Transformer model, SampleSource data, int microBatch, int microBatches, int replicas, GradientSync sync) {
        if (microBatch < 1 || microBatches < 1 || replicas < 1) {
            throw new IllegalArgumentException("micro batch, micro-batches and replicas must be >= 1");
        }
        this.model = model;
        this.data = data;
        this.microBatch = microBatch;
        this.microBatches = microBatches;
        this.replicas = replicas;
        this.sync = sync;
        this.tokens = new int[microBatch * data.sampleLength()];
    }

    /** Samples this replica reads per evaluation of {@code iters} batches (for positioning on resume). */
    public long samplesPerEvaluation(int iters) {
        return (long) iters * microBatches * microBatch;
    }

    /** Scores {@code iters} global batches of validation samples; {@code step} only labels the result. */
    public Evaluation run(long step, int iters) {
        if (iters < 1) {
            throw new IllegalArgumentException("eval iterations must be >= 1, got " + iters);
        }
        long t0 = System.nanoTime();
        int t = data.sampleLength() - 1;
        double sum = 0;
        for (int i = 0; i < iters; i++) {
            for (int m = 0; m < microBatches; m++) {
                for (int s = 0; s < microBatch; s++) {
                    if (!data.next(tokens, s * data.sampleLength())) {
                        throw new IllegalStateException("the validation data ran out after " + data.consumed() + " samples");
                    }
                }
                sum += model.loss(tokens, microBatch, t, null);
            }
        }
        // the F64 device scalar averaged over the replicas: held only during the call, so the training step's
        // memory (MemoryEstimate, checked against the device in the memory report) has no evaluator share
        Tensor mean = model.device().allocate(MemoryKind.WORKSPACE, DType.F64, 1);
        try {
            meanHost.putDouble(0, sum / ((double) iters * microBatches));
            model.device().upload(mean, meanHost);
            sync.averageScalars(mean);
            model.device().download(meanHost, mean);
        } finally {
            model.device().release(mean);
        }
        double loss = meanHost.getDouble(0);
        return new Evaluation(step, loss, iters, (long) iters * microBatches * microBatch * replicas, (System.nanoTime() - t0) / 1e9);
    }
}
