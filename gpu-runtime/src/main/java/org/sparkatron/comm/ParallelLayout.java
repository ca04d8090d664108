package org.sparkatron.comm;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * How the world's ranks are laid out over the five parallel dimensions, and every communication group
 * that follows from it. Immutable and thread-safe; computed on the driver and on every rank alike.
 *
 * <p>World size = tp x cp x ep x dp x pp. A rank's coordinates are the digits of a mixed-radix number in
 * the order {@code tp-cp-ep-dp-pp}, TP fastest:
 * {@code rank = tp + TP*(cp + CP*(ep + EP*(dp + DP*pp)))}, so a TP group is adjacent ranks (the GPUs of one
 * node). EP folds into data parallelism for the dense layers, as in Megatron Core's {@code parallel_state}
 * ({@code RankGenerator} with order {@code tp-cp-ep-dp-pp}): here {@code dp} is the size of the "data
 * modulo expert" dimension, and the dense data-parallel group spans both ep and dp
 * ({@link #dataParallelSize()} = ep x dp, Megatron's {@code data_parallel_size}).
 *
 * <p>Groups ({@link Group}), each listing world ranks in increasing order, enumerated as Megatron does:
 * a group varies the named dimensions and fixes the others.
 */
public final class ParallelLayout {
    /** The kinds of groups; the dimensions each one spans are in its comment. */
    public enum Group {
        /** tensor parallel: tp */
        TP(true, false, false, false, false),
        /** context parallel: cp */
        CP(false, true, false, false, false),
        /** expert parallel: ep */
        EP(false, false, true, false, false),
        /** dense data parallel: ep x dp (EP folds into DP for dense layers) */
        DP(false, false, true, true, false),
        /** dense data parallel with context parallel (dense gradient reduction): cp x ep x dp */
        DP_CP(false, true, true, true, false),
        /** pipeline parallel: pp */
        PP(false, false, false, false, true),
        /** model parallel: tp x pp */
        MODEL(true, false, false, false, true),
        /** tensor and context parallel (e.g. fp8 amax reduction): tp x cp */
        TP_CP(true, true, false, false, false),
        /** expert tensor parallel: equals TP in this layout */
        EXPERT_TP(true, false, false, false, false),
        /** tensor and expert parallel: tp x ep */
        TP_EP(true, false, true, false, false),
        /** expert data parallel: cp x dp (expert layers see no CP, so CP ranks replicate experts too) */
        EXPERT_DP(false, true, false, true, false),
        /** first and last stage of each PP group (tied input/output embedding) */
        EMBEDDING(false, false, false, false, true),
        /** first stage of each PP group (position embedding) */
        POSITION_EMBEDDING(false, false, false, false, true),
        /**
         * the ranks of one model replica that read batches: tp x cp on the first and the last pipeline stage
         * (the first embeds the tokens, the last needs the targets); rank (tp 0, cp 0, first stage) first, so
         * it can broadcast what it reads (Megatron's {@code broadcast_data}); empty on the stages between
         */
        DATA(true, true, false, false, true);

        final boolean[] mask;

        Group(boolean... mask) {
            this.mask = mask;
        }
    }

    private final int[] sizes;
    private final int vpp;
    private final int world;

    private ParallelLayout(int tp, int cp, int ep, int dp, int pp, int vpp) {
        this.sizes = new int[] {tp, cp, ep, dp, pp};
        this.vpp = vpp;
        this.world = tp * cp * ep * dp * pp;
    }

    /**
     * Validates and builds a layout. {@code vpp} is the virtual pipeline size (1 = no interleaving).
     * Throws {@link IllegalArgumentException} naming the numbers when world != tp*cp*ep*dp*pp.
     */
    public static ParallelLayout of(int world, int tp, int cp, int ep, int dp, int pp, int vpp) {
        String[] names = {"tp", "cp", "ep", "dp", "pp", "virtual pp"};
        int[] v = {tp, cp, ep, dp, pp, vpp};
        for (int i = 0; i < v.length; i++) {
            if (v[i] < 1) {
                throw new IllegalArgumentException(names[i] + " size must be >= 1, got " + v[i]);
            }
        }
        long product = (long) tp * cp * ep * dp * pp;
        if (product != world) {
            throw new IllegalArgumentException("world size " + world + " != tp " + tp + " x cp " + cp + " x ep " + ep
                    + " x dp " + dp + " x pp " + pp + " = " + product);
        }
        if (vpp > 1 && pp == 1) {
            throw new IllegalArgumentException("virtual pipeline size " + vpp + " needs pipeline parallel size > 1, got pp 1");
        }
        return new ParallelLayout(tp, cp, ep, dp, pp, vpp);
    }

    /** Layout with dp derived from the world size; throws naming the numbers if it does not divide. */
    public static ParallelLayout forWorld(int world, int tp, int cp, int ep, int pp, int vpp) {
        long rest = (long) tp * cp * ep * pp;
        if (rest <= 0 || world % rest != 0) {
            throw new IllegalArgumentException("world size " + world + " is not divisible by tp " + tp + " x cp " + cp
                    + " x ep " + ep + " x pp " + pp + " = " + rest);
        }
        return of(world, tp, cp, ep, (int) (world / rest), pp, vpp);
    }

    /**
     * Model-dependent checks, each message naming the numbers: attention heads and KV heads divisible by
     * tp; layers divisible by pp and by pp x virtual pp; experts divisible by ep (experts = 0: dense
     * model, then ep must be 1); sequence length divisible by 2 x cp (load-balanced causal CP splits each
     * sequence into 2 x cp chunks).
     */
    public void validateModel(int heads, int kvHeads, int layers, int experts, int seqLength) {
        int tp = tp();
        if (heads % tp != 0) {
            throw new IllegalArgumentException("attention heads " + heads + " not divisible by tensor parallel size " + tp);
        }
        if (kvHeads % tp != 0) {
            throw new IllegalArgumentException("key/value heads " + kvHeads + " not divisible by tensor parallel size " + tp);
        }
        if (layers % pp() != 0) {
            throw new IllegalArgumentException("layers " + layers + " not divisible by pipeline parallel size " + pp());
        }
        if (layers % (pp() * vpp) != 0) {
            throw new IllegalArgumentException("layers " + layers + " not divisible by pipeline parallel size " + pp()
                    + " x virtual pipeline size " + vpp + " = " + pp() * vpp);
        }
        if (experts == 0 && ep() > 1) {
            throw new IllegalArgumentException("expert parallel size " + ep() + " needs a model with experts (got 0)");
        }
        if (experts > 0 && experts % ep() != 0) {
            throw new IllegalArgumentException("experts " + experts + " not divisible by expert parallel size " + ep());
        }
        if (seqLength % (2 * cp()) != 0) {
            throw new IllegalArgumentException("sequence length " + seqLength + " not divisible by 2 x context parallel size "
                    + cp() + " = " + 2 * cp());
        }
    }

    public int world() {
        return world;
    }

    public int tp() {
        return sizes[0];
    }

    public int cp() {
        return sizes[1];
    }

    public int ep() {
        return sizes[2];
    }

    /** Size of the dp coordinate (data parallel modulo expert parallel). */
    public int dp() {
        return sizes[3];
    }

    public int pp() {
        return sizes[4];
    }

    /** Virtual pipeline (interleaving) size; 1 = none. */
    public int vpp() {
        return vpp;
    }

    /** Dense data-parallel size: ep x dp (Megatron's data_parallel_size). */
    public int dataParallelSize() {
        return ep() * dp();
    }

    /** Expert data-parallel size: cp x dp. */
    public int expertDataParallelSize() {
        return cp() * dp();
    }

    /** Coordinates {tp, cp, ep, dp, pp} of a world rank. */
    public int[] coords(int rank) {
        if (rank < 0 || rank >= world) {
            throw new IllegalArgumentException("rank " + rank + " outside world of size " + world);
        }
        int[] c = new int[5];
        for (int i = 0; i < 5; i++) {
            c[i] = rank % sizes[i];
            rank /= sizes[i];
        }
        return c;
    }

    /** World rank of coordinates (tp, cp, ep, dp, pp). */
    public int rankOf(int tp, int cp, int ep, int dp, int pp) {
        int[] c = {tp, cp, ep, dp, pp};
        int r = 0;
        for (int i = 4; i >= 0; i--) {
            if (c[i] < 0 || c[i] >= sizes[i]) {
                throw new IllegalArgumentException("coordinate " + i + " = " + c[i] + " outside [0, " + sizes[i] + ")");
            }
            r = r * sizes[i] + c[i];
        }
        return r;
    }

    /** All groups of a kind, in Megatron's enumeration order. */
    public List<int[]> groups(Group kind) {
        List<int[]> out = new ArrayList<>();
        if (kind == Group.EMBEDDING || kind == Group.POSITION_EMBEDDING) {
            for (int[] pp : groups(Group.PP)) {
                out.add(kind == Group.POSITION_EMBEDDING || pp.length == 1 ? new int[] {pp[0]}
                        : new int[] {pp[0], pp[pp.length - 1]});
            }
            return out;
        }
        if (kind == Group.DATA) { // enumeration order: tp fastest, then cp, then stage
            for (int[] g : groupsOf(Group.DATA.mask)) {
                out.add(Arrays.stream(g).filter(r -> coords(r)[4] == 0 || coords(r)[4] == sizes[4] - 1).toArray());
            }
            return out;
        }
        return groupsOf(kind.mask);
    }

    /** The groups spanning the dimensions {@code mask} selects, in Megatron's enumeration order. */
    private List<int[]> groupsOf(boolean[] mask) {
        List<int[]> out = new ArrayList<>();
        int[] stride = new int[5];
        int groupSize = 1;
        for (int i = 0, s = 1; i < 5; i++) {
            stride[i] = s;
            s *= sizes[i];
            if (mask[i]) {
                groupSize *= sizes[i];
            }
        }
        for (int g = 0; g < world / groupSize; g++) {
            int base = digits(g, mask, false, stride);
            int[] ranks = new int[groupSize];
            for (int k = 0; k < groupSize; k++) {
                ranks[k] = base + digits(k, mask, true, stride);
            }
            out.add(ranks);
        }
        return out;
    }

    /** Decomposes {@code index} over the dimensions selected by (mask == masked), fastest first. */
    private int digits(int index, boolean[] mask, boolean masked, int[] stride) {
        int r = 0;
        for (int i = 0; i < 5; i++) {
            if (mask[i] == masked) {
                r += (index % sizes[i]) * stride[i];
                index /= sizes[i];
            }
        }
        return r;
    }

    /** The group of a kind that contains {@code rank}; an empty array if none does (embedding groups). */
    public int[] group(Group kind, int rank) {
        coords(rank);
        for (int[] g : groups(kind)) {
            if (Arrays.stream(g).anyMatch(x -> x == rank)) {
                return g;
            }
        }
        return new int[0];
    }

    /** Index of the group of this kind containing {@code rank} (-1 if none), used to name groups uniquely. */
    public int groupIndex(Group kind, int rank) {
        List<int[]> gs = groups(kind);
        for (int i = 0; i < gs.size(); i++) {
            int[] g = gs.get(i);
            if (Arrays.stream(g).anyMatch(x -> x == rank)) {
                return i;
            }
        }
        return -1;
    }

    @Override
    public String toString() {
        return "ParallelLayout[world=" + world + " tp=" + tp() + " cp=" + cp() + " ep=" + ep() + " dp=" + dp() + " pp="
                + pp() + (vpp > 1 ? " vpp=" + vpp : "") + "]";
    }
}
