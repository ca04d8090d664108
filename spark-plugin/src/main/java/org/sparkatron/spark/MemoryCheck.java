package org.sparkatron.spark;

import java.util.Locale;
import org.apache.spark.SparkConf;
import org.sparkatron.model.MemoryEstimate;
import org.sparkatron.model.Recompute;
import org.sparkatron.parallel.PipelineLayout;

/**
 * The driver's memory check before launch. Each rank's memory by category comes from {@link MemoryEstimate}
 * (parameters, gradients, optimizer state, one micro-batch's activations, workspace, for this layout's TP
 * shard and, under context parallelism, its {@code seq_len / cp} rows of each sequence: the figures each rank's
 * memory report prints beside what it measured); the ranks that share a JVM
 * need that many times it, plus Spark's own reservation, within the JVM's memory: an executor's
 * {@code spark.executor.memory} on a cluster, this JVM's maximum heap in local mode. (The CPU device's
 * tensors are direct buffers, which the JVM caps at the heap size unless {@code -XX:MaxDirectMemorySize}
 * says otherwise. Ranks compute on the CPU device until the CUDA device lands; GPU memory becomes the
 * budget then.) A job that does not fit is refused with the numbers and what would make it fit, instead
 * of failing in the tasks. Sizes are 64-bit throughout. Stateless.
 */
final class MemoryCheck {
    /** Spark's reserved memory in every JVM (its unified memory manager's 300 MiB), not the ranks'. */
    static final long SPARK_RESERVED = 300L << 20;
    /** {@code false} skips the check (an executor whose memory the settings do not show, e.g. set by a launcher). */
    static final String CONF = "spark.sparkatron.memoryCheck";
    /** The model's 16-bit weights are BF16/F16 elements on every device ({@link MemoryEstimate#of}'s halfBytes). */
    private static final int HALF_BYTES = 2;
    /** The CPU device stores FP8 values in 32-bit elements ({@link MemoryEstimate#of}'s fp8Bytes). */
    private static final int CPU_FP8_BYTES = 4;

    private MemoryCheck() {
    }

    /**
     * Where the ranks of a world run: how many share one JVM and its bytes, and a phrase for messages.
     *
     * @param local      all ranks in this JVM (Spark's local mode)
     * @param gpuPerTask the training stage takes one GPU per task (GPUs then bound the ranks per executor)
     */
    record Budget(SparkConf conf, boolean local, boolean gpuPerTask) {
        int ranksPerJvm(int world) {
            if (local) {
                return world;
            }
            int slots = Math.max(1, conf.getInt("spark.executor.cores", 1) / Math.max(1, conf.getInt("spark.task.cpus", 1)));
            if (gpuPerTask) {
                slots = Math.min(slots, (int) Math.max(1, conf.getDouble("spark.executor.resource.gpu.amount", 1)));
            }
            return Math.min(world, slots);
        }

        long bytesPerJvm() {
            return local ? Runtime.getRuntime().maxMemory() : conf.getSizeAsBytes("spark.executor.memory", "1g");
        }

        String where(int world) {
            return local ? "this JVM (local mode, " + gib(bytesPerJvm()) + " heap) runs all " + world
                    : "an executor (spark.executor.memory=" + conf.get("spark.executor.memory", "1g") + ") runs up to " + ranksPerJvm(world);
        }
    }

    /**
     * One rank's estimate for {@code cfg} with TP size {@code tp} and micro-batches of {@code microBatch}:
     * under pipeline parallelism the stage that needs the most (activations in flight under its schedule,
     * with the config's recompute mode).
     */
    static MemoryEstimate estimate(TrainConfig cfg, int tp, int microBatch) {
        return estimate(cfg, tp, cfg.cp, microBatch, cfg.recompute);
    }

    static MemoryEstimate estimate(TrainConfig cfg, int tp, int microBatch, Recompute recompute) {
        return estimate(cfg, tp, cfg.cp, microBatch, recompute);
    }

    static MemoryEstimate estimate(TrainConfig cfg, int tp, int cp, int microBatch) {
        return estimate(cfg, tp, cp, microBatch, cfg.recompute);
    }

    /**
     * ... with CP size {@code cp}: each rank holds {@code seq_len / cp} rows of every sequence. CP rank 0 is the
     * largest (all-gather attention: its second chunk sees the most keys), so its figures bound the others'.
     */
    static MemoryEstimate estimate(TrainConfig cfg, int tp, int cp, int microBatch, Recompute recompute) {
        // the engine's gradient-buffer layout, and with the distributed optimizer the optimizer state of a
        // 1/(dp x cp) shard (the optimizer shards over DP x CP)
        PipelineLayout pl = cfg.pipelineLayout();
        int microBatches = cfg.replicaBatch() / microBatch;
        MemoryEstimate worst = null;
        for (int stage = 0; stage < cfg.pp; stage++) {
            MemoryEstimate e = MemoryEstimate.of(cfg.model(), tp, cfg.sequenceParallel, 1, pl, stage, microBatches, microBatch,
                    cfg.seqLen, cfg.precision, recompute, HALF_BYTES, cfg.dataParallelConfig(), cfg.dp * cp,
                    cfg.fp8, CPU_FP8_BYTES, new MemoryEstimate.Context(cp, 0, cfg.cpCommType));
            if (worst == null || e.total() > worst.total()) {
                worst = e;
            }
        }
        return worst;
    }

    /** The bytes a JVM needs for {@code ranks} ranks of {@code perRank} bytes, with Spark's reserve. */
    static long need(int ranks, long perRank) {
        return Math.addExact(Math.multiplyExact((long) ranks, perRank), SPARK_RESERVED);
    }

    /**
     * Refuses (IllegalArgumentException) a job whose ranks do not fit their JVM; returns the line to print
     * about a job that fits.
     */
    static String check(TrainConfig cfg, Budget budget) {
        MemoryEstimate e = estimate(cfg, cfg.tp, cfg.microBatch);
        int world = cfg.world();
        int ranks = budget.ranksPerJvm(world);
        long need = need(ranks, e.total());
        String line = String.format(Locale.ROOT, "memory per rank (tp=%d%s, micro_batch %d x %d tokens, %s): %s; %s rank(s): %s of %s",
                cfg.tp, (cfg.cp > 1 ? ", cp=" + cfg.cp : "") + (cfg.pp > 1 ? ", pp=" + cfg.pp + ", its fullest stage" : "")
                        + (cfg.recompute != Recompute.NONE ? ", recompute " + cfg.recompute.label() : ""), cfg.microBatch, cfg.seqLen,
                cfg.precision.name().toLowerCase(Locale.ROOT) + (cfg.useDistributedOptimizer ? ", optimizer state sharded over dp=" + cfg.dp
                        + (cfg.cp > 1 ? " x cp=" + cfg.cp : "") : ""), e.summary(), budget.where(world),
                gib(need), gib(budget.bytesPerJvm()));
        if (need <= budget.bytesPerJvm() || !budget.conf().getBoolean(CONF, true)) {
            return line;
        }
        throw new IllegalArgumentException(String.format(Locale.ROOT,
                "the job does not fit in memory: each rank needs %s (%s); %s rank(s), %s with Spark's %s, above %s. %s",
                gib(e.total()), e.summary(), budget.where(world), gib(need), gib(SPARK_RESERVED), gib(budget.bytesPerJvm()),
                suggestion(cfg, budget)));
    }

    /** What would fit: the smallest larger TP, the largest smaller micro-batch, or more memory. */
    static String suggestion(TrainConfig cfg, Budget budget) {
        StringBuilder sb = new StringBuilder("To fit: ");
        for (int tp = cfg.tp + 1; tp <= cfg.model().heads(); tp++) {
            if (fits(cfg, tp, cfg.microBatch, budget)) {
                sb.append(String.format(Locale.ROOT, "tp=%d (%s per rank; TP splits parameters, gradients, optimizer state and most "
                        + "activations), ", tp, gib(estimate(cfg, tp, cfg.microBatch).total())));
                break;
            }
        }
        for (int cp = cfg.cp + 1; cp <= 64; cp++) {
            if (cfg.seqLen % (2 * cp) == 0 && fits(cfg, cfg.tp, cp, cfg.microBatch, budget)) {
                sb.append(String.format(Locale.ROOT, "cp=%d (%s per rank; CP splits every sequence's activations over its ranks), ",
                        cp, gib(estimate(cfg, cfg.tp, cp, cfg.microBatch).total())));
                break;
            }
        }
        for (int mb = cfg.microBatch - 1; mb >= 1; mb--) {
            if ((cfg.globalBatch / cfg.dp) % mb == 0 && fits(cfg, cfg.tp, mb, budget)) {
                sb.append(String.format(Locale.ROOT, "micro_batch=%d (%s per rank; activations scale with it, the step accumulates "
                        + "to the same global_batch), ", mb, gib(estimate(cfg, cfg.tp, mb).total())));
                break;
            }
        }
        if (cfg.recompute != Recompute.FULL) {
            MemoryEstimate full = estimate(cfg, cfg.tp, cfg.microBatch, Recompute.FULL);
            if (need(budget.ranksPerJvm(cfg.world()), full.total()) <= budget.bytesPerJvm()) {
                sb.append(String.format(Locale.ROOT, "recompute=full (%s per rank; each layer keeps only its input and runs its "
                        + "forward again in the backward), ", gib(full.total())));
            }
        }
        sb.append(budget.local() ? "a larger heap (SPARKATRON_JAVA_OPTS=-Xmx..., or a cluster with --master)"
                : "more memory per executor (spark.executor.memory) or fewer ranks per executor (spark.executor.cores)");
        sb.append(". Pipeline parallelism (pp) splits the layers over more ranks");
        if (!cfg.useDistributedOptimizer) {
            sb.append("; use_distributed_optimizer shards the optimizer state over the dp replicas");
        }
        sb.append(".");
        return sb.toString();
    }

    private static boolean fits(TrainConfig cfg, int tp, int microBatch, Budget budget) {
        return fits(cfg, tp, cfg.cp, microBatch, budget);
    }

    private static boolean fits(TrainConfig cfg, int tp, int cp, int microBatch, Budget budget) {
        try {
            int world = Math.multiplyExact(Math.multiplyExact(cfg.world() / (cfg.tp * cfg.cp), tp), cp);
            return need(budget.ranksPerJvm(world), estimate(cfg, tp, cp, microBatch).total()) <= budget.bytesPerJvm();
        } catch (IllegalArgumentException | ArithmeticException invalid) { // TP not valid for the model
            return false;
        }
    }

    static String gib(long bytes) {
        return bytes >= (1L << 30) ? String.format(Locale.ROOT, "%.1f GiB", bytes / 1073741824.0)
                : String.format(Locale.ROOT, "%.0f MiB", bytes / 1048576.0);
    }
}
