package org.sparkatron.spark;

import org.sparkatron.comm.ParallelLayout;

/**
 * The job's rank layout on the driver: Megatron's order {@code tp-cp-ep-dp-pp} (TP fastest) through the
 * engine's {@link ParallelLayout}, which validates it against the model and names the numbers. The Spark
 * path trains data parallelism today: TP or PP above 1 is refused with a clear message until the Spark
 * ranks drive the parallel layers. Stateless.
 */
final class Layout {
    private Layout() {
    }

    static ParallelLayout of(TrainConfig cfg) {
        return ParallelLayout.of(cfg.world(), cfg.tp, 1, 1, cfg.dp, cfg.pp, 1);
    }

    /**
     * The rank that receives replica {@code replica}'s data: TP rank 0 on the first pipeline stage. Its TP
     * peers would get the batch from it by broadcast; later pipeline stages need none.
     */
    static int dataRank(ParallelLayout layout, int replica) {
        return layout.rankOf(0, 0, 0, replica, 0);
    }

    /** Refuses layouts that are invalid for the model or that the Spark path cannot train yet. */
    static void validate(TrainConfig cfg) {
        if (cfg.world() > 4096) {
            throw new IllegalArgumentException("world size dp x tp x pp = " + cfg.world() + " is larger than 4096");
        }
        var m = cfg.model();
        // context parallelism is 1 here, so no sequence split applies: pass an even length for that check
        of(cfg).validateModel(m.heads(), m.kvHeads(), m.layers(), 0, 2);
        if (cfg.tp > 1 || cfg.pp > 1) {
            throw new IllegalArgumentException("tp=" + cfg.tp + ", pp=" + cfg.pp + ": Spark training supports "
                    + "data parallelism only so far (tp=1, pp=1); use dp for more ranks");
        }
    }
}
