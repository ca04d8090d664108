package org.sparkatron.parallel;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.sparkatron.model.ParameterSet;

/**
 * Where each parameter lives in a rank's flat weight and gradient blocks, and how the gradient block is cut
 * into buckets, exactly as Megatron Core's {@code _ParamAndGradBuffer} lays out its buffers (0.16.1):
 *
 * <ul>
 *   <li>one buffer per (model chunk, reduction group), each over that chunk's parameters in <b>reverse</b>
 *       order (roughly the order backward finishes them); our single block holds the buffers one after the
 *       other, chunk by chunk;</li>
 *   <li>a bucket closes after the parameter that brings it to at least {@code bucketElements} elements
 *       (parameters are never split between buckets); a buffer is one bucket when bucketing is off
 *       (no overlap, a model chunk after the first, a pipeline stage after the first: Megatron's
 *       {@code disable_bucketing} / {@code pp_rank > 0});</li>
 *   <li>with the distributed optimizer: every parameter starts at a multiple of 64 elements, every bucket's
 *       size is a multiple of {@code lcm(dp, 128)} (so it splits into {@code dp} equal shards),
 *       and a shared (tied, split over pipeline
 *       stages) embedding gets a bucket of its own, so the first and the last stage shard it identically and
 *       its cross-stage gradient sum can follow the reduce-scatter.</li>
 * </ul>
 * Padding elements belong to no parameter; their weights and gradients stay zero.
 *
 * <p>A pure function of the parameter list and the configuration, so every rank (and a driver estimating
 * memory) computes the same plan for any rank of any layout. Immutable.
 */
public final class GradBuffer {
    /** Megatron pads parameter starts to 64 elements under the distributed optimizer. */
    static final int PARAM_ALIGN = 64;
    /** ... and bucket ends to a multiple of lcm(dp, 128). */
    static final int BUCKET_ALIGN = 128;

    /**
     * One bucket: elements [start, end) of the flat block (end padded), the parameters (layout indices)
     * whose gradients it holds, in the order they were placed, and the reduction group (an index into the
     * groups of the plan) that reduces it.
     */
    public record Bucket(int index, int chunk, int group, long start, long end, int[] params) {
        public long numel() {
            return end - start;
        }

        /** First element of rank {@code r}'s shard of this bucket among {@code dp} (equal shards). */
        public long shardStart(int r, int dp) {
            return start + r * (numel() / dp);
        }

        public long shardNumel(int dp) {
            return numel() / dp;
        }
    }

    /** Per parameter (layout order): its model chunk, reduction group, and whether it is a shared embedding. */
    public record ParamInfo(int chunk, int group, boolean sharedEmbedding) {
    }

    private final long[] offsets;
    private final long total;
    private final List<Bucket> buckets;
    private final boolean padded;
    private final int[] groupSizes;

    private GradBuffer(long[] offsets, long total, List<Bucket> buckets, boolean padded, int[] groupSizes) {
        this.offsets = offsets;
        this.total = total;
        this.buckets = Collections.unmodifiableList(buckets);
        this.padded = padded;
        this.groupSizes = groupSizes;
    }

    /**
     * Plans the layout of {@code params} (in declaration order).
     *
     * @param info        each parameter's chunk, reduction group and shared-embedding flag
     * @param groupSizes  the size of each reduction group (index 0: the dense data-parallel group)
     * @param config      distributed optimizer, bucket size and overlap
     * @param bucketing   false to make every buffer one bucket (a pipeline stage after the first)
     */
    public static GradBuffer plan(List<ParameterSet.Param> params, List<ParamInfo> info, int[] groupSizes,
                                  DataParallel.Config config, boolean bucketing) {
        if (params.size() != info.size()) {
            throw new IllegalArgumentException(params.size() + " parameters but " + info.size() + " descriptions");
        }
        boolean distopt = config.distributedOptimizer();
        int chunks = 0;
        for (ParamInfo pi : info) {
            chunks = Math.max(chunks, pi.chunk() + 1);
            if (pi.group() < 0 || pi.group() >= groupSizes.length) {
                throw new IllegalArgumentException("reduction group " + pi.group() + " of " + groupSizes.length);
            }
        }
        long[] offsets = new long[params.size()];
        List<Bucket> buckets = new ArrayList<>();
        long base = 0;
        for (int chunk = 0; chunk < chunks; chunk++) {
            for (int group = 0; group < groupSizes.length; group++) {
                List<Integer> members = new ArrayList<>();
                for (int i = 0; i < params.size(); i++) {
                    if (info.get(i).chunk() == chunk && info.get(i).group() == group) {
                        members.add(i);
                    }
                }
                if (members.isEmpty()) {
                    continue;
                }
                int dp = groupSizes[group];
                long bucketSize = bucketing && chunk == 0 ? config.bucketElements(dp) : Long.MAX_VALUE;
                base = buffer(params, info, members, dp, distopt, bucketSize, chunk, group, base, offsets, buckets);
            }
        }
        return new GradBuffer(offsets, base, buckets, distopt, groupSizes.clone());
    }

    /** Megatron's loop over one buffer's parameters (reversed); returns the end of the buffer. */
    private static long buffer(List<ParameterSet.Param> params, List<ParamInfo> info, List<Integer> members, int dp,
                               boolean distopt, long bucketSize, int chunk, int group, long base, long[] offsets,
                               List<Bucket> out) {
        long bucketDivisor = lcm(dp, BUCKET_ALIGN);
        long paramStart = 0;
        long bucketStart = 0;
        long paramEnd = 0;
        List<Integer> inBucket = new ArrayList<>();
        for (int k = members.size() - 1; k >= 0; k--) {
            int i = members.get(k);
            long n = params.get(i).numel();
            boolean own = distopt && info.get(i).sharedEmbedding();
            if (distopt) {
                paramStart = pad(paramStart, PARAM_ALIGN);
            }
            if (own && !inBucket.isEmpty()) { // the shared embedding starts a bucket of its own
                paramStart = close(inBucket, bucketStart, paramStart, distopt, bucketDivisor, chunk, group, base, out);
                bucketStart = paramStart;
            }
            paramEnd = paramStart + n;
            offsets[i] = base + paramStart;
            inBucket.add(i);
            if (paramEnd - bucketStart >= bucketSize || own) {
                long end = close(inBucket, bucketStart, paramEnd, distopt, bucketDivisor, chunk, group, base, out);
                bucketStart = end;
                paramStart = end;
            } else {
                paramStart = paramEnd;
            }
        }
        if (!inBucket.isEmpty()) {
            bucketStart = close(inBucket, bucketStart, paramEnd, distopt, bucketDivisor, chunk, group, base, out);
        }
        return base + bucketStart;
    }

    private static long close(List<Integer> inBucket, long bucketStart, long paramEnd, boolean distopt, long divisor,
                              int chunk, int group, long base, List<Bucket> out) {
        long end = distopt ? pad(paramEnd, divisor) : paramEnd;
        int[] members = inBucket.stream().mapToInt(Integer::intValue).toArray();
        out.add(new Bucket(out.size(), chunk, group, base + bucketStart, base + end, members));
        inBucket.clear();
        return end;
    }

    static long pad(long n, long divisor) {
        return (n + divisor - 1) / divisor * divisor;
    }

    static long lcm(long a, long b) {
        long x = a;
        long y = b;
        while (y != 0) {
            long t = x % y;
            x = y;
            y = t;
        }
        return a / x * b;
    }

    /** Each parameter's offset in the flat blocks (layout order). */
    public long[] offsets() {
        return offsets.clone();
    }

    /** Elements of the flat blocks, padding included. */
    public long numel() {
        return total;
    }

    /** Buckets in the order backward completes them (the order they are reduced). */
    public List<Bucket> buckets() {
        return buckets;
    }

    /** Whether buckets are padded to equal shards (the distributed optimizer). */
    public boolean sharded() {
        return padded;
    }

    /** The size of reduction group {@code g}. */
    public int groupSize(int g) {
        return groupSizes[g];
    }

    /**
     * The element ranges of the flat block whose optimizer state rank {@code r} of each bucket's group
     * keeps: with the distributed optimizer its shard of every bucket, otherwise every bucket whole. In
     * bucket order; {@code {start, length}} pairs.
     */
    public List<long[]> ownedRanges(int[] groupRanks) {
        List<long[]> out = new ArrayList<>();
        for (Bucket b : buckets) {
            if (padded) {
                int dp = groupSizes[b.group()];
                out.add(new long[] {b.shardStart(groupRanks[b.group()], dp), b.shardNumel(dp)});
            } else {
                out.add(new long[] {b.start(), b.numel()});
            }
        }
        return out;
    }

    /** Elements of optimizer state a rank keeps (the sum of {@link #ownedRanges}'s lengths, the same on every rank). */
    public long ownedNumel() {
        long n = 0;
        for (Bucket b : buckets) {
            n += padded ? b.shardNumel(groupSizes[b.group()]) : b.numel();
        }
        return n;
    }

    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder("GradBuffer[" + total + " elements" + (padded ? ", sharded" : "") + ": ");
        for (Bucket b : buckets) {
            sb.append(b.index() == 0 ? "" : ", ").append('[').append(b.start()).append(", ").append(b.end()).append(") ")
                    .append(Arrays.toString(b.params()));
        }
        return sb.append(']').toString();
    }
}
