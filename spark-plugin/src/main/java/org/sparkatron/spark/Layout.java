package org.sparkatron.spark;

/**
 * The rank layout of a job, Megatron's order {@code tp-cp-ep-dp-pp} (TP fastest): world = TP x DP x PP.
 * The training engine runs data and tensor (+ sequence) parallelism; the driver refuses PP above 1 with
 * a clear message until pipeline parallelism lands. Stateless.
 */
final class Layout {
    private Layout() {
    }

    /**
     * The rank that receives replica {@code replica}'s data: TP rank 0 on the first pipeline stage. Its TP
     * peers get the batch from it by broadcast; other pipeline stages need none (see docs/spark.md).
     */
    static int dataRank(int replica, int ranksPerReplicaOnStage0) {
        return replica * ranksPerReplicaOnStage0;
    }

    /** Refuses layouts that are not valid or that the engine cannot train yet, naming the numbers. */
    static void validate(TrainConfig cfg) {
        long world = (long) cfg.dp * cfg.tp * cfg.pp;
        if (world > 4096) {
            throw new IllegalArgumentException("world size dp x tp x pp = " + world + " is larger than 4096");
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
        if (cfg.sequenceParallel && cfg.tp > 1 && ((long) cfg.microBatch * cfg.seqLen) % cfg.tp != 0) {
            throw new IllegalArgumentException("sequence_parallel: micro_batch x seq_len = " + cfg.microBatch + " x " + cfg.seqLen
                    + " tokens is not divisible by tp " + cfg.tp);
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
