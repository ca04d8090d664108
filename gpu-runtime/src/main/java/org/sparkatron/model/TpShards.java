package org.sparkatron.model;

import java.util.ArrayList;
import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Which elements of the full (TP = 1) parameters each tensor-parallel rank holds, and the copies between
 * the two layouts: {@link #scatter} (a rank takes its shard, e.g. from a Hugging Face checkpoint loaded
 * in full) and {@link #gather} (every rank rebuilds the full parameters, e.g. to save or compare them).
 *
 * <p>Shards, for rank r of tp (Hl = H/tp, Hkvl = Hkv/tp, Fl = F/tp, Vl = padded vocab / tp):
 * <ul>
 *   <li>embed, head: vocabulary rows [r Vl, (r+1) Vl) (rows past the full padded vocabulary are zero);
 *   <li>attn.qkv.w/b: query rows of heads [r Hl, (r+1) Hl), then key rows and value rows of kv-heads
 *       [r Hkvl, (r+1) Hkvl): the local tensor is again [q | k | v];
 *   <li>attn.out.w: columns of heads [r Hl, (r+1) Hl);
 *   <li>mlp.up.w/b: rows [r Fl, (r+1) Fl); for Llama's fused [gate | up] both the gate rows and the up rows
 *       [F + r Fl, F + (r+1) Fl), so the local tensor is again [gate | up];
 *   <li>mlp.down.w: columns [r Fl, (r+1) Fl);
 *   <li>everything else: replicated.
 * </ul>
 * Both sets live on the same device; every copy is a device copy (stream-ordered, no host access).
 * Stateless; {@link #gather} is a TP collective.
 */
public final class TpShards {
    private TpShards() {
    }

    /**
     * {@code rows} runs of {@code length} elements: run r at {@code full + r * fullPitch} in the full
     * parameter and {@code local + r * localPitch} in the shard (one run for most splits; one per row for
     * column splits).
     */
    record Segment(long full, long local, long length, long rows, long fullPitch, long localPitch) {
        Segment(long full, long local, long length) {
            this(full, local, length, 1, length, length);
        }

        long total() {
            return rows * length;
        }

        /** Copies this run set from {@code src} to {@code dst}, full-to-local or local-to-full. */
        void copy(Device d, Tensor fullT, Tensor localT, long localBase, boolean toLocal) {
            if (toLocal) {
                d.copy2d(localT, localBase + local, localPitch, fullT, full, fullPitch, rows, length);
            } else {
                d.copy2d(fullT, full, fullPitch, localT, localBase + local, localPitch, rows, length);
            }
        }
    }

    /** The segments of {@code full} that rank {@code rank} of {@code size} holds in {@code local}. */
    static List<Segment> segments(ModelConfig cfg, ParameterSet.Param full, ParameterSet.Param local, int rank, int size) {
        return segments(cfg, full, local, rank, size, 0, 1);
    }

    /**
     * The segments of {@code full} that TP rank {@code rank} of {@code size} and expert-parallel rank
     * {@code epRank} of {@code epSize} hold in {@code local}. Experts ({@code moe.experts.*}, full
     * {@code [E, 2F, C]} and {@code [E, C, F]}): EP rank q holds experts {@code [q E/ep, (q+1) E/ep)}, of each
     * the TP rank's gate and up rows, or down columns, as the dense MLP splits them.
     */
    static List<Segment> segments(ModelConfig cfg, ParameterSet.Param full, ParameterSet.Param local, int rank, int size,
                                  int epRank, int epSize) {
        List<Segment> out = new ArrayList<>();
        String n = full.name();
        if (n.endsWith("moe.experts.up.w") || n.endsWith("moe.experts.down.w")) {
            expertSegments(cfg, n.endsWith("up.w"), local, rank, size, epRank, out);
            return out;
        }
        if (local.tp() != TpRole.SPLIT) {
            out.add(new Segment(0, 0, full.numel()));
            return out;
        }
        int c = cfg.hidden();
        int hd = cfg.headDim();
        if (n.equals("embed") || n.equals("head")) {
            long rows = local.shape()[0];
            long fullRows = full.shape()[0];
            long first = rank * rows;
            long count = Math.max(0, Math.min(rows, fullRows - first));
            if (count > 0) { // a rank may own only padding (e.g. vocab 64 padded to 512 for TP = 4)
                out.add(new Segment(first * c, 0, count * c));
            }
        } else if (n.endsWith("attn.qkv.w") || n.endsWith("attn.qkv.b")) {
            long rowLen = n.endsWith(".w") ? c : 1;
            int hl = cfg.heads() / size;
            int kvl = cfg.kvHeads() / size;
            long qRows = (long) hl * hd;
            long kvRows = (long) kvl * hd;
            out.add(new Segment(rank * qRows * rowLen, 0, qRows * rowLen));
            out.add(new Segment(((long) cfg.heads() * hd + rank * kvRows) * rowLen, qRows * rowLen, kvRows * rowLen));
            out.add(new Segment(((long) (cfg.heads() + cfg.kvHeads()) * hd + rank * kvRows) * rowLen,
                    (qRows + kvRows) * rowLen, kvRows * rowLen));
        } else if (n.endsWith("mlp.up.w") || n.endsWith("mlp.up.b") || n.endsWith("moe.shared.up.w")) {
            long rowLen = n.endsWith(".w") ? c : 1;
            long ffn = n.endsWith("moe.shared.up.w") ? cfg.moe().sharedFfn() : cfg.ffnHidden();
            long fl = ffn / size;
            out.add(new Segment(rank * fl * rowLen, 0, fl * rowLen));
            if (cfg.family() == ModelConfig.Family.LLAMA) {
                out.add(new Segment((ffn + rank * fl) * rowLen, fl * rowLen, fl * rowLen));
            }
        } else if (n.endsWith("attn.out.w") || n.endsWith("mlp.down.w") || n.endsWith("moe.shared.down.w")) {
            long fullCols = full.shape()[1];
            long cols = local.shape()[1];
            out.add(new Segment(rank * cols, 0, cols, c, fullCols, cols));
        } else {
            throw new IllegalStateException("no tensor-parallel split is defined for parameter '" + n + "'");
        }
        return out;
    }

    private static void expertSegments(ModelConfig cfg, boolean upW, ParameterSet.Param local, int rank, int size, int epRank,
                                       List<Segment> out) {
        long c = cfg.hidden();
        long f = cfg.moe().expertFfn();
        long fl = f / size;
        int el = local.shape()[0];
        for (int j = 0; j < el; j++) {
            long g = (long) epRank * el + j;
            if (upW) { // [E, 2F, C]: gate rows then up rows
                out.add(new Segment((g * 2 * f + rank * fl) * c, j * 2 * fl * c, fl * c));
                out.add(new Segment((g * 2 * f + f + rank * fl) * c, (j * 2 * fl + fl) * c, fl * c));
            } else { // [E, C, F]: columns [r Fl, (r+1) Fl) of each of C rows
                out.add(new Segment(g * c * f + rank * fl, j * c * fl, fl, c, f, fl));
            }
        }
    }

    /**
     * Copies rank {@code rank}'s shard of every parameter (or gradient, with {@code grads}) from a full
     * TP = 1 set into {@code local}; local elements no full element maps to (vocabulary padding) are zeroed.
     */
    public static void scatter(ModelConfig cfg, ParameterSet full, ParameterSet local, int rank, int size, boolean grads) {
        scatter(cfg, full, local, rank, size, 0, 1, grads);
    }

    /** {@link #scatter(ModelConfig, ParameterSet, ParameterSet, int, int, boolean)} for EP rank {@code epRank} of {@code epSize}. */
    public static void scatter(ModelConfig cfg, ParameterSet full, ParameterSet local, int rank, int size, int epRank, int epSize,
                               boolean grads) {
        check(full, local);
        Device d = local.device();
        for (ParameterSet.Param lp : local.params()) {
            ParameterSet.Param fp = full.param(lp.name());
            Tensor src = grads ? full.grad(lp.name()) : full.weight(lp.name());
            Tensor dst = grads ? local.grad(lp.name()) : local.weight(lp.name());
            List<Segment> segs = segments(cfg, fp, lp, rank, size, epRank, epSize);
            if (lp.numel() != sum(segs)) {
                d.kernels().zero(dst);
            }
            for (Segment seg : segs) {
                seg.copy(d, src, dst, 0, true);
            }
        }
    }

    /**
     * Every rank of {@code tp} rebuilds the full TP = 1 parameters (or gradients) into {@code full} from the
     * group's shards. Replicated parameters are taken from this rank's own copy. Collective.
     */
    public static void gather(ModelConfig cfg, ParameterSet local, ParameterSet full, TensorParallel tp, boolean grads) {
        gather(cfg, local, full, tp, ExpertParallel.none(), grads);
    }

    /**
     * {@link #gather(ModelConfig, ParameterSet, ParameterSet, TensorParallel, boolean)} under expert
     * parallelism too: experts are gathered over the TP group, then over the EP group. Collective over both.
     */
    public static void gather(ModelConfig cfg, ParameterSet local, ParameterSet full, TensorParallel tp, ExpertParallel ep,
                              boolean grads) {
        check(full, local);
        Device d = local.device();
        for (ParameterSet.Param lp : local.params()) {
            ParameterSet.Param fp = full.param(lp.name());
            Tensor src = grads ? local.grad(lp.name()) : local.weight(lp.name());
            Tensor dst = grads ? full.grad(lp.name()) : full.weight(lp.name());
            Tensor all = src;
            int ranks = 1;
            if (lp.tp() == TpRole.SPLIT && tp.size() > 1) {
                ranks = tp.size();
                all = d.allocate(MemoryKind.WORKSPACE, DType.F32, lp.numel() * ranks);
                tp.group().allGather(src.view(lp.numel()), all);
            }
            int eps = 1;
            if (local.isExpert(lp) && ep.size() > 1) {
                eps = ep.size();
                Tensor both = d.allocate(MemoryKind.WORKSPACE, DType.F32, lp.numel() * ranks * eps);
                ep.group().allGather(all.view(all.numel()), both);
                if (all != src) {
                    d.release(all);
                }
                all = both;
            }
            for (int q = 0; q < eps; q++) {
                int epRank = eps == 1 ? ep.rank() : q;
                for (int r = 0; r < ranks; r++) {
                    int rank = ranks == 1 ? tp.rank() : r;
                    long base = ((long) q * ranks + (ranks == 1 ? 0 : r)) * lp.numel();
                    for (Segment seg : segments(cfg, fp, lp, rank, tp.size(), epRank, ep.size())) {
                        seg.copy(d, dst, all.view(all.numel()), base, false);
                    }
                }
            }
            if (all != src) {
                d.release(all);
            }
        }
    }

    private static long sum(List<Segment> segs) {
        long s = 0;
        for (Segment g : segs) {
            s += g.total();
        }
        return s;
    }

    /** Every parameter of {@code local} (a TP shard, perhaps of one pipeline stage) must exist in {@code full}. */
    private static void check(ParameterSet full, ParameterSet local) {
        for (ParameterSet.Param p : local.params()) {
            if (!full.has(p.name())) {
                throw new IllegalArgumentException("the full parameter set has no '" + p.name() + "': not the same model");
            }
        }
    }
}
