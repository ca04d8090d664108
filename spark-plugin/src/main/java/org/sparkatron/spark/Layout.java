package org.sparkatron.spark;

import org.sparkatron.comm.ParallelLayout;

/**
 * The rank layout of a job, Megatron's order {@code tp-cp-ep-dp-pp} (TP fastest): world = TP x CP x DP x PP,
 * through the engine's {@link ParallelLayout}. The training engine runs data and tensor (+ sequence)
 * parallelism; the driver refuses PP above 1 with a clear message until pipeline parallelism lands.
 * Stateless.
 */
final class Layout {
    private Layout() {
    }

    static ParallelLayout of(TrainConfig cfg) {
        return ParallelLayout.of(cfg.world(), cfg.tp, cfg.cp, 1, cfg.dp, cfg.pp, 1);
    }

    /**
     * The rank that receives replica {@code replica}'s data: TP and CP rank 0 on the first pipeline stage. Its
     * TP x CP peers get every sample from it by broadcast (each CP rank keeps its chunks); later pipeline stages
     * need none.
     */
    static int dataRank(ParallelLayout layout, int replica) {
        return layout.rankOf(0, 0, 0, replica, 0);
    }

    /** Refuses layouts that are invalid for the model or that the Spark path cannot train yet. */
    static void validate(TrainConfig cfg) {
        if (cfg.world() > 4096) {
            throw new IllegalArgumentException("world size dp x tp x cp x pp = " + cfg.world() + " is larger than 4096");
        }
        var m = cfg.model();
        if (m.heads() % cfg.tp != 0) {
            throw new IllegalArgumentException("attention heads " + m.heads() + " are not divisible by tp " + cfg.tp);
        }
        try {
            org.sparkatron.model.Transformer.validate(m, cfg.tp);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("tp=" + cfg.tp + ": " + e.getMessage(), e);
        }
        try {
            org.sparkatron.parallel.ContextParallel.validate(cfg.seqLen, cfg.cp);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("cp=" + cfg.cp + ": " + e.getMessage(), e);
        }
        long localTokens = (long) cfg.microBatch * (cfg.seqLen / cfg.cp); // a rank's tokens per micro-batch
        if (cfg.sequenceParallel && cfg.tp > 1 && localTokens % cfg.tp != 0) {
            throw new IllegalArgumentException("sequence_parallel: micro_batch x seq_len" + (cfg.cp > 1 ? " / cp" : "") + " = "
                    + cfg.microBatch + " x " + cfg.seqLen + (cfg.cp > 1 ? " / " + cfg.cp : "") + " tokens is not divisible by tp "
                    + cfg.tp);
        }
        if (m.layers() % cfg.pp != 0) {
            throw new IllegalArgumentException("layers " + m.layers() + " are not divisible by pp " + cfg.pp);
        }
        if (cfg.pp > 1) {
            throw new IllegalArgumentException("pp=" + cfg.pp + ": the training engine supports data and tensor "
                    + "parallelism so far (pp=1); use dp or tp for more ranks");
        }
    }
}
