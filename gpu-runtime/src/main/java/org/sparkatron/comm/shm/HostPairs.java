package org.sparkatron.comm.shm;

import java.nio.ByteBuffer;
import org.sparkatron.comm.CommArgs;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.comm.Request;
import org.sparkatron.device.HostAccess;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Reduce-scatter and all-gather of a group spread evenly over two hosts ({@code k >= 2} ranks on each), in two
 * levels: the data-parallel group of the distributed optimizer across two machines. The j-th rank of one host (in
 * group rank order) is paired with the j-th of the other; only pairs talk over TCP, each rank's host partners
 * through shared memory.
 *
 * <p>Reduce-scatter: every rank packs, for each local rank i, its input blocks of i and of i's partner; a
 * shared-memory reduce-scatter leaves rank j the host's sums of its own block and of its partner's; it sends the
 * partner's over TCP, receives the other host's sum of its own and adds it. All-gather, the reverse: partners swap
 * their blocks, then a shared-memory all-gather of those pairs fills every block. The link between the hosts carries
 * half the tensor each way ({@code k} pairs, one block each), against {@code (n - 1) / n} of it where a flat ring
 * crosses it: 1.5x fewer bytes at 4 ranks, 1.75x at 8. Both are pipelined in chunks
 * ({@link HostHierarchy#chunkBounds}): chunk c crosses the link while chunk c + 1 is reduced in memory.
 *
 * <p>Results: a reduce-scatter's block is {@code (its host's sum) op (the other host's sum)}, each host summing in
 * its shared-memory order, so it may differ in the last bits from a flat ring's; an all-gather moves bits
 * unchanged. Threading, blocking and failure: as {@link Communicator}; the pair is a TCP sub-group of the group
 * (no socket of its own).
 */
final class HostPairs {
    private final int size;
    /** This host's ranks of the group, increasing (this rank is {@code mine[local.rank()]}). */
    private final int[] mine;
    /** The other host's ranks, increasing: {@code theirs[i]} is the partner of {@code mine[i]}. */
    private final int[] theirs;
    private final ShmCommunicator local;
    /** This rank and its partner, over TCP. */
    private final Communicator pair;
    /** Packed chunks, host sums waiting to be sent, blocks received; grown to the largest use. */
    private Tensor packed;
    private Tensor sums;
    private Tensor received;

    HostPairs(int size, int[] mine, int[] theirs, ShmCommunicator local, Communicator pair) {
        this.size = size;
        this.mine = mine;
        this.theirs = theirs;
        this.local = local;
        this.pair = pair;
    }

    /** Whether a reduce-scatter of {@code in} (every rank's whole input) goes through the pairs. */
    boolean takes(Tensor in) {
        return in.byteSize() >= HostHierarchy.MIN_BYTES;
    }

    /** As {@link Communicator#reduceScatter} (validated by the caller: same dtype, n blocks, in place or apart). */
    void reduceScatter(Tensor in, Tensor out, ReduceOp op) {
        ReduceOp partial = op == ReduceOp.AVG ? ReduceOp.SUM : op;
        DType dt = in.dtype();
        int es = dt.bytes();
        long m = out.numel();
        int k = mine.length;
        int peer = 1 - pair.rank();
        long[] at = HostHierarchy.chunkBounds(m, k * m * es);
        int chunks = at.length - 1;
        long maxLen = 0;
        for (int c = 0; c < chunks; c++) {
            maxLen = Math.max(maxLen, at[c + 1] - at[c]);
        }
        packed = grow(packed, dt, 2 * k * maxLen);
        sums = grow(sums, dt, 2 * m);
        received = grow(received, dt, m);
        Request[] sent = new Request[chunks];
        Request[] got = new Request[chunks];
        try (HostAccess.Scope access = HostAccess.enter()) {
            ByteBuffer src = in.hostBuffer();
            ByteBuffer p = packed.hostBuffer();
            for (int c = 0; c < chunks; c++) {
                long lo = at[c];
                long len = at[c + 1] - lo;
                for (int i = 0; i < k; i++) { // local rank i's part: [block mine[i], block theirs[i]], chunk c of each
                    copy(src, (mine[i] * m + lo) * es, p, (2 * i) * len * es, len * es);
                    copy(src, (theirs[i] * m + lo) * es, p, (2 * i + 1) * len * es, len * es);
                }
                Tensor part = sums.slice(2 * lo, 2 * len); // [this host's sum of my chunk, of my partner's]
                local.reduceScatter(packed.slice(0, 2 * k * len), part, partial);
                got[c] = pair.irecv(received.slice(lo, len), peer, c);
                sent[c] = pair.isend(part.slice(len, len), peer, c);
            }
            ByteBuffer s = sums.hostBuffer();
            ByteBuffer o = out.hostBuffer();
            ByteBuffer r = received.hostBuffer();
            for (int c = 0; c < chunks; c++) {
                long lo = at[c];
                int len = Math.toIntExact(at[c + 1] - lo);
                got[c].await();
                copy(s, 2 * lo * es, o, lo * es, (long) len * es);
                Reductions.accumulate(dt, partial, o, Math.toIntExact(lo * es), r, Math.toIntExact(lo * es), len);
            }
            for (Request q : sent) {
                q.await();
            }
            if (op == ReduceOp.AVG) {
                Reductions.finishAverage(dt, o, 0, Math.toIntExact(m), size);
            }
        }
    }

    /** As {@link Communicator#allGather} (validated by the caller: same dtype, n blocks). */
    void allGather(Tensor in, Tensor out) {
        DType dt = in.dtype();
        int es = dt.bytes();
        long m = in.numel();
        int k = mine.length;
        int j = local.rank();
        int peer = 1 - pair.rank();
        long[] at = HostHierarchy.chunkBounds(m, k * m * es);
        int chunks = at.length - 1;
        long maxLen = 0;
        for (int c = 0; c < chunks; c++) {
            maxLen = Math.max(maxLen, at[c + 1] - at[c]);
        }
        packed = grow(packed, dt, 2 * k * maxLen);
        sums = grow(sums, dt, 2 * maxLen);
        received = grow(received, dt, m);
        Request[] sent = new Request[chunks];
        Request[] got = new Request[chunks];
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.copy(in, out.slice(mine[j] * m, m)); // nothing to do in place
            for (int c = 0; c < chunks; c++) {
                got[c] = pair.irecv(received.slice(at[c], at[c + 1] - at[c]), peer, c);
                sent[c] = pair.isend(in.slice(at[c], at[c + 1] - at[c]), peer, c);
            }
            ByteBuffer i0 = in.hostBuffer();
            ByteBuffer r = received.hostBuffer();
            ByteBuffer q = sums.hostBuffer();
            ByteBuffer p = packed.hostBuffer();
            ByteBuffer o = out.hostBuffer();
            for (int c = 0; c < chunks; c++) {
                long lo = at[c];
                long len = at[c + 1] - lo;
                got[c].await();
                copy(i0, lo * es, q, 0, len * es); // this pair's chunk: [mine, my partner's]
                copy(r, lo * es, q, len * es, len * es);
                local.allGather(sums.slice(0, 2 * len), packed.slice(0, 2 * k * len));
                for (int i = 0; i < k; i++) {
                    if (i != j) { // our own block is in place already (and may still be being sent)
                        copy(p, (2 * i) * len * es, o, (mine[i] * m + lo) * es, len * es);
                    }
                    copy(p, (2 * i + 1) * len * es, o, (theirs[i] * m + lo) * es, len * es);
                }
            }
            for (Request s : sent) {
                s.await();
            }
        }
    }

    private static Tensor grow(Tensor t, DType dt, long numel) {
        return t != null && t.dtype() == dt && t.numel() >= numel ? t : Tensor.allocateHost(dt, Math.max(1, numel));
    }

    private static void copy(ByteBuffer src, long srcOff, ByteBuffer dst, long dstOff, long bytes) {
        dst.put(Math.toIntExact(dstOff), src, Math.toIntExact(srcOff), Math.toIntExact(bytes));
    }

    void close() {
        pair.close();
    }

    @Override
    public String toString() {
        return "paired with rank " + theirs[local.rank()];
    }
}
