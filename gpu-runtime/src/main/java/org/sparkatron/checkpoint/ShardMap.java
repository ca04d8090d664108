package org.sparkatron.checkpoint;

import java.util.ArrayList;
import java.util.List;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.model.TpSegments;

/**
 * Global shapes and element runs of tensor-parallel shards, in the form the checkpoint metadata stores
 * them. A parameter's global tensor is its TP = 1 tensor (padded vocabulary of {@link ModelConfig#paddedVocab()}
 * rows). A shard is a 1-D tensor holding the concatenation of runs; a run {@code {start, length, stride,
 * count}} is {@code count} pieces of {@code length} elements at global flat offsets
 * {@code start + i * stride}. Column splits (attention/MLP output projections) become one run of
 * {@code hidden} pieces, so the metadata stays small for any model size. Stateless.
 */
final class ShardMap {
    private ShardMap() {
    }

    /** Whether {@code name} is a parameter of the experts (split over the expert-parallel group). */
    static boolean isExpert(String name) {
        return name.endsWith("moe.experts.up.w") || name.endsWith("moe.experts.down.w");
    }

    /** The TP = 1 shape of a parameter whose TP-rank-local declaration is {@code local}. */
    static int[] globalShape(ModelConfig cfg, ParameterSet.Param local, int tpSize) {
        return globalShape(cfg, local, tpSize, 1);
    }

    /** The TP = 1, EP = 1 shape of a parameter whose local declaration (TP and EP shard) is {@code local}. */
    static int[] globalShape(ModelConfig cfg, ParameterSet.Param local, int tpSize, int epSize) {
        int[] s = local.shape().clone();
        if (isExpert(local.name())) {
            s[0] *= epSize; // [E/ep, ...]: this rank's experts
        }
        if (local.tp() != TpRole.SPLIT || tpSize == 1) {
            return s;
        }
        String n = local.name();
        if (n.equals("embed") || n.equals("head")) {
            s[0] = cfg.paddedVocab();
        } else if (n.endsWith("attn.out.w") || n.endsWith("mlp.down.w") || n.endsWith("moe.shared.down.w")
                || n.endsWith("moe.experts.up.w")) {
            s[1] *= tpSize; // columns; for the experts' [E, 2F, C] the F rows of each expert
        } else if (n.endsWith("moe.experts.down.w")) {
            s[2] *= tpSize; // [E, C, F]
        } else {
            s[0] *= tpSize;
        }
        return s;
    }

    /** {@code {global, local, length}} segments of this rank's local parameter, in local order. */
    static long[][] segments(ModelConfig cfg, ParameterSet.Param local, int tpRank, int tpSize) {
        return segments(cfg, local, tpRank, tpSize, 0, 1);
    }

    /** {@code {global, local, length}} segments of this TP and EP rank's local parameter, in local order. */
    static long[][] segments(ModelConfig cfg, ParameterSet.Param local, int tpRank, int tpSize, int epRank, int epSize) {
        int[] g = globalShape(cfg, local, tpSize, epSize);
        long numel = 1;
        for (int d : g) {
            numel *= d;
        }
        ParameterSet.Param full = new ParameterSet.Param(local.name(), g, 0, numel, local.decay(), local.tp());
        return TpSegments.of(cfg, full, local, tpRank, tpSize, epRank, epSize);
    }

    /** Compresses segments (contiguous in local order) into runs {start, length, stride, count}; empty ones dropped. */
    static List<long[]> runs(long[][] segments) {
        List<long[]> out = new ArrayList<>();
        long[] cur = null;
        for (long[] s : segments) {
            if (s[2] == 0) {
                continue;
            }
            if (cur != null && cur[1] == s[2]) {
                long next = cur[0] + cur[2] * cur[3];
                if (cur[3] == 1 && s[0] > cur[0]) {
                    cur[2] = s[0] - cur[0];
                    cur[3] = 2;
                    continue;
                }
                if (cur[3] > 1 && s[0] == next) {
                    cur[3]++;
                    continue;
                }
            }
            cur = new long[] {s[0], s[2], s[2], 1};
            out.add(cur);
        }
        return out;
    }

    /** Expands runs into {global, shardOffset, length} pieces; shard offsets are cumulative. */
    static long[][] expand(List<long[]> runs) {
        long pieces = 0;
        for (long[] r : runs) {
            pieces += r[3];
        }
        long[][] out = new long[Math.toIntExact(pieces)][];
        int i = 0;
        long local = 0;
        for (long[] r : runs) {
            for (long k = 0; k < r[3]; k++) {
                out[i++] = new long[] {r[0] + k * r[2], local, r[1]};
                local += r[1];
            }
        }
        return out;
    }

    /** Elements a shard of these runs holds. */
    static long numel(List<long[]> runs) {
        long n = 0;
        for (long[] r : runs) {
            n += r[1] * r[3];
        }
        return n;
    }
}
