package org.sparkatron.model;

import java.util.ArrayList;
import java.util.List;

/**
 * Public view of {@link TpShards}' element mapping for code outside this package (checkpoints): which
 * runs of a full (TP = 1) parameter tensor rank {@code rank} of a TP group of {@code size} holds, and
 * where in its local tensor. Stateless.
 */
public final class TpSegments {
    private TpSegments() {
    }

    /**
     * Runs {@code {fullOffset, localOffset, length}} (elements, row-major) of {@code full} that the rank's
     * {@code local} parameter holds, in increasing local order. Local elements no run covers (vocabulary
     * padding past the full padded vocabulary) correspond to no full element.
     */
    public static long[][] of(ModelConfig cfg, ParameterSet.Param full, ParameterSet.Param local, int rank, int size) {
        return of(cfg, full, local, rank, size, 0, 1);
    }

    /**
     * {@link #of(ModelConfig, ParameterSet.Param, ParameterSet.Param, int, int)} on expert-parallel rank
     * {@code epRank} of {@code epSize}: an expert tensor's runs are those of the rank's experts
     * {@code [epRank E/ep, (epRank+1) E/ep)}; other parameters are as at EP 1.
     */
    public static long[][] of(ModelConfig cfg, ParameterSet.Param full, ParameterSet.Param local, int rank, int size, int epRank,
                              int epSize) {
        List<long[]> out = new ArrayList<>();
        for (TpShards.Segment g : TpShards.segments(cfg, full, local, rank, size, epRank, epSize)) {
            for (long r = 0; r < g.rows(); r++) { // a column split is one segment per row here
                out.add(new long[] {g.full() + r * g.fullPitch(), g.local() + r * g.localPitch(), g.length()});
            }
        }
        return out.toArray(new long[0][]);
    }
}
