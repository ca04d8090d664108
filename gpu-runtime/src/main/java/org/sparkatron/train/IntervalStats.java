package org.sparkatron.train;

import java.lang.management.BufferPoolMXBean;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;

/**
 * Megatron-style interval logging: aggregates the steps between two log lines into one {@link Interval}:
 * the loss averaged over the interval's applied steps (an FP16 step skipped for overflow updates nothing
 * and its loss is left out, as Megatron does), the last step's gradient norm, learning rate and loss
 * scale, throughput over the interval (tokens and samples of the global batch per second of step time,
 * so checkpoint saves and evaluations between steps do not count), model TFLOP/s per rank and MFU
 * ({@link ModelFlops}), the process's memory and the skipped-step count.
 *
 * <p>One instance per rank, used by the training thread only.
 */
public final class IntervalStats {
    /** One log interval's figures (steps {@code firstStep..lastStep}). NaN loss when every step was skipped. */
    public record Interval(long firstStep, long lastStep, int steps, int skipped, double loss, double gradNorm, double lr,
                           double lossScale, double seconds, long samples, long tokens, double tokensPerSecond,
                           double samplesPerSecond, double tflopsPerRank, double mfu, long rssBytes, long directBytes) {
        /** One JSON object ({@code "kind": "interval"}); MFU as a fraction, memory in bytes. */
        public String toJson() {
            return String.format(Locale.ROOT, "{\"kind\": \"interval\", \"step\": %d, \"first_step\": %d, \"steps\": %d, "
                            + "\"skipped\": %d, \"loss\": %s, \"grad_norm\": %.6f, \"lr\": %.6g, \"loss_scale\": %.6g, \"seconds\": %.4f, "
                            + "\"samples\": %d, \"tokens\": %d, \"tokens_per_s\": %.2f, \"samples_per_s\": %.3f, "
                            + "\"tflops_per_rank\": %.6f, \"mfu\": %.6f, \"rss_bytes\": %d, \"direct_bytes\": %d}",
                    lastStep, firstStep, steps, skipped, Double.isNaN(loss) ? "null" : String.format(Locale.ROOT, "%.6f", loss),
                    gradNorm, lr, lossScale, seconds, samples, tokens, tokensPerSecond, samplesPerSecond, tflopsPerRank, mfu,
                    rssBytes, directBytes);
        }

        /** Parses {@link #toJson}'s object (a missing or null loss is NaN). */
        public static Interval fromJson(com.fasterxml.jackson.databind.JsonNode n) {
            return new Interval(n.path("first_step").asLong(), n.path("step").asLong(), n.path("steps").asInt(), n.path("skipped").asInt(),
                    n.path("loss").isNumber() ? n.path("loss").asDouble() : Double.NaN, n.path("grad_norm").asDouble(), n.path("lr").asDouble(),
                    n.path("loss_scale").asDouble(1), n.path("seconds").asDouble(), n.path("samples").asLong(), n.path("tokens").asLong(),
                    n.path("tokens_per_s").asDouble(), n.path("samples_per_s").asDouble(), n.path("tflops_per_rank").asDouble(),
                    n.path("mfu").asDouble(), n.path("rss_bytes").asLong(-1), n.path("direct_bytes").asLong(-1));
        }

        /**
         * The console line, Megatron's figures in one row: step, interval-mean loss, gradient norm, LR, loss scale
         * (when not 1), tokens/s, samples/s, model TFLOP/s per rank, MFU, memory ({@code memoryMb}, or this
         * process's when NaN), skipped steps and the ETA of the remaining steps at this interval's pace.
         */
        public String describe(long totalSteps, double memoryMb) {
            double mem = Double.isNaN(memoryMb) ? rssBytes / 1048576.0 : memoryMb;
            int width = String.valueOf(totalSteps).length();
            return String.format(Locale.ROOT, "step %" + width + "d/%d | loss %s | grad norm %.3f | lr %.3e | %s%,.0f tok/s | "
                            + "%.2f samples/s | %.3g TFLOP/s/rank | MFU %.2f%% | mem %.2f GB | skipped %d | ETA %s",
                    lastStep, totalSteps, Double.isNaN(loss) ? "-" : String.format(Locale.ROOT, "%.4f", loss), gradNorm, lr,
                    lossScale != 1 ? String.format(Locale.ROOT, "loss scale %.0f | ", lossScale) : "", tokensPerSecond, samplesPerSecond,
                    tflopsPerRank, 100 * mfu, mem / 1024, skipped, eta(seconds / Math.max(1, steps) * Math.max(0, totalSteps - lastStep)));
        }
    }

    /** h:mm:ss or m:ss. */
    public static String eta(double seconds) {
        long s = Math.round(Math.max(0, seconds));
        return s >= 3600 ? String.format(Locale.ROOT, "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                : String.format(Locale.ROOT, "%d:%02d", s / 60, s % 60);
    }

    private final long samplesPerStep;
    private final int tokensPerSample;
    private final double flopsPerStep;
    private final int ranks;
    private final double peakFlopsPerRank;

    private long first = -1;
    private long last;
    private int steps;
    private int skipped;
    private double lossSum;
    private double seconds;
    private double gradNorm;
    private double lr;
    private double lossScale;

    /**
     * @param samplesPerStep   samples of one optimizer step over all replicas (the global batch)
     * @param tokensPerSample  trained tokens per sample (seq_len)
     * @param flopsPerStep     model FLOPs of one step over the global batch ({@link ModelFlops#perStep})
     * @param ranks            ranks sharing that work (world size)
     * @param peakFlopsPerRank one rank's peak in FLOP/s (MFU's denominator); 0 or less: MFU is reported as 0
     */
    public IntervalStats(long samplesPerStep, int tokensPerSample, double flopsPerStep, int ranks, double peakFlopsPerRank) {
        if (samplesPerStep < 1 || tokensPerSample < 1 || ranks < 1) {
            throw new IllegalArgumentException("samples per step, tokens per sample and ranks must be >= 1");
        }
        this.samplesPerStep = samplesPerStep;
        this.tokensPerSample = tokensPerSample;
        this.flopsPerStep = flopsPerStep;
        this.ranks = ranks;
        this.peakFlopsPerRank = peakFlopsPerRank;
    }

    /** Adds one step (in order). */
    public void add(Trainer.StepMetrics m) {
        if (first < 0) {
            first = m.skipped() ? m.step() + 1 : m.step();
        }
        last = m.step();
        steps++;
        seconds += m.seconds();
        gradNorm = m.gradNorm();
        lr = m.lr();
        lossScale = m.lossScale();
        if (m.skipped()) {
            skipped++;
        } else {
            lossSum += m.loss();
        }
    }

    /** Steps added since the last {@link #finish}. */
    public int size() {
        return steps;
    }

    /** The interval so far, and starts a new one. Throws if no step was added. */
    public Interval finish() {
        if (steps == 0) {
            throw new IllegalStateException("an interval needs at least one step");
        }
        long samples = samplesPerStep * steps;
        long tokens = samples * tokensPerSample;
        double flopsPerRank = flopsPerStep * steps / seconds / ranks;
        Interval out = new Interval(Math.min(first, last), last, steps, skipped,
                steps > skipped ? lossSum / (steps - skipped) : Double.NaN, gradNorm, lr, lossScale, seconds, samples, tokens,
                tokens / seconds, samples / seconds, flopsPerRank / 1e12, peakFlopsPerRank > 0 ? flopsPerRank / peakFlopsPerRank : 0,
                residentBytes(), directBufferBytes());
        first = -1;
        steps = 0;
        skipped = 0;
        lossSum = 0;
        seconds = 0;
        return out;
    }

    /** This process's resident memory (Linux {@code VmRSS}), or -1 where it cannot be read. Shared by the ranks of one JVM. */
    public static long residentBytes() {
        try {
            for (String l : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (l.startsWith("VmRSS:")) {
                    return Long.parseLong(l.replaceAll("[^0-9]", "")) * 1024;
                }
            }
        } catch (java.io.IOException | RuntimeException e) {
            // not Linux: unknown
        }
        return -1;
    }

    /** Bytes in this JVM's direct buffers: the host tensors of every rank in the process. */
    public static long directBufferBytes() {
        for (BufferPoolMXBean b : ManagementFactory.getPlatformMXBeans(BufferPoolMXBean.class)) {
            if (b.getName().equals("direct")) {
                return b.getMemoryUsed();
            }
        }
        return -1;
    }
}
