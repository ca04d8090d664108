package org.sparkatron.spark;

import org.sparkatron.model.ModelLayout;
import org.sparkatron.comm.ParallelLayout;

/**
 * The rank layout of a job, Megatron's order {@code tp-cp-ep-dp-pp} (TP fastest): world = TP x CP x DP x PP,
 * through the engine's {@link ParallelLayout}, and the driver's checks of it against the model and the
 * batch, so a bad layout is refused before launch naming the numbers. Stateless.
 */
final class Layout {
    private Layout() {
    }

    static ParallelLayout of(TrainConfig cfg) {
        return ParallelLayout.of(cfg.world(), cfg.tp, cfg.cp, cfg.ep, cfg.dp / cfg.ep, cfg.pp, cfg.virtualPp);
    }

    /**
     * The rank that receives replica {@code replica}'s data: TP and CP rank 0 on the first pipeline stage. It
     * broadcasts each sample to the replica's other ranks that need data (its TP and CP peers, which keep their
     * chunks of each sequence, and the last stage's ranks, which need the targets: {@link ParallelLayout.Group#DATA});
     * the stages between need none.
     */
    static int dataRank(ParallelLayout layout, int replica) {
        return layout.rankOf(0, 0, replica % layout.ep(), replica / layout.ep(), 0); // the dense DP rank: ep fastest
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
            org.sparkatron.model.ModelLayout.validate(m, cfg.tp);
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
        try {
            org.sparkatron.model.ModelLayout.validateExperts(m, cfg.ep, cfg.tp);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("ep=" + cfg.ep + ": " + e.getMessage(), e);
        }
        try {
            cfg.pipelineLayout();
            org.sparkatron.parallel.pipeline.Schedule.of(cfg.pp, cfg.virtualPp, cfg.microBatches());
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("pp=" + cfg.pp + (cfg.virtualPp > 1 ? ", virtual_pp=" + cfg.virtualPp : "")
                    + ", " + cfg.microBatches() + " micro-batches per step: " + e.getMessage(), e);
        }
    }
}
