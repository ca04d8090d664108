package org.sparkatron.comm.shm;

import java.nio.ByteBuffer;
import java.util.Arrays;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.tensor.DType;

/**
 * The collective algorithms over one {@link ShmGroup}. Buffers are native-order views addressed by absolute
 * byte offsets. Not thread-safe (one collective at a time per group).
 *
 * <p>Every algorithm is a sequence of rounds of one shape: each rank writes its own slot of the round's
 * buffer (successive rounds use the {@link ShmSegment#BUFFERS} buffers in turn), publishes, waits for the
 * peers it reads, reads their slots. A buffer is rewritten three rounds later, and by then every reader has
 * published a later round, which it does only after its reads, so no data is overwritten while someone
 * still needs it. The first round of every collective waits for all ranks, and there each rank checks the
 * others' descriptions (meta area) of the collective: ranks that called different collectives, sizes, dtypes
 * or counts all throw the same error instead of exchanging garbage or waiting.
 *
 * <p>All-reduce, large: the tensor is cut into rounds of up to slotBytes per rank and each round into n
 * parts; rank r reduces part r over all ranks (in rank order starting from its own), in one cache-blocked
 * pass that writes the result both into its tensor and into its slot, and the others copy it from there:
 * each element is reduced once, by one rank, so every rank gets the same bits. The rounds are pipelined with
 * one wait each: after waiting, a rank copies the peers' results of the previous round, reduces its part of
 * this one, stages the next one and publishes all three at once (half the waits of a wait per phase, which
 * counts when ranks outnumber cores). Every byte a rank stages is read by a peer from the cache shortly after;
 * main memory sees about one read and one write of the tensor per rank.
 * Small (at most smallBytes): one round in which every rank reduces everything in rank order.
 */
final class ShmCollectives {
    private final ShmGroup g;

    ShmCollectives(ShmGroup g) {
        this.g = g;
    }

    /** Byte offsets of n nearly equal parts of {@code count} elements (n+1 entries, relative). */
    static int[] parts(int count, int n, int es) {
        int[] off = new int[n + 1];
        for (int i = 0; i < n; i++) {
            off[i + 1] = off[i] + (count / n + (i < count % n ? 1 : 0)) * es;
        }
        return off;
    }

    // ---- all-reduce --------------------------------------------------------------------------------------

    void allReduce(ByteBuffer b, DType dt, ReduceOp op, int count) {
        int es = dt.bytes();
        g.describe(ShmGroup.OP_ALL_REDUCE, dt, op, count, 0);
        if ((long) count * es <= g.smallBytes()) {
            smallAllReduce(b, dt, op, count);
            return;
        }
        int n = g.n;
        int perRound = Math.max(n, g.slotBytes() / es);
        int rounds = (int) (((long) count + perRound - 1) / perRound);
        // Round k uses the current buffer; g.buffer(1) is the next round's, g.buffer(2) the previous one's.
        stage(b, dt, count, perRound, 0, g.buffer());
        g.publish();
        for (int k = 0; k < rounds; k++) {
            g.awaitAll();
            if (k == 0) {
                g.checkDescriptions(false);
            }
            if (k > 0) {
                copyReduced(b, dt, count, perRound, k - 1, g.buffer(2));
            }
            reduceOwn(b, dt, op, count, perRound, k, g.buffer());
            if (k + 1 < rounds) {
                stage(b, dt, count, perRound, k + 1, g.buffer(1));
            }
            g.publish();
            g.nextRound();
        }
        g.awaitAll();
        copyReduced(b, dt, count, perRound, rounds - 1, g.buffer(2));
    }

    /** Round k's byte offset in the tensor and its n parts' offsets relative to it (n+1 entries). */
    private int[] roundParts(int count, int perRound, int k, int es) {
        return parts(Math.min(perRound, count - k * perRound), g.n, es);
    }

    /** Copies the peers' parts of round k of {@code b} into this rank's buffer {@code p}. */
    private void stage(ByteBuffer b, DType dt, int count, int perRound, int k, int p) {
        int es = dt.bytes();
        int base = k * perRound * es;
        int[] off = roundParts(count, perRound, k, es);
        ByteBuffer mine = g.seg().slot(p, g.rank);
        for (int q = 0; q < g.n; q++) {
            if (q != g.rank) {
                mine.put(off[q], b, base + off[q], off[q + 1] - off[q]);
            }
        }
    }

    /**
     * This rank's part of round k, reduced in rank order starting from its own tensor over the peers' buffers
     * {@code p}, written back to the tensor and, in the same pass, to this rank's buffer for the peers to copy.
     */
    private void reduceOwn(ByteBuffer b, DType dt, ReduceOp op, int count, int perRound, int k, int p) {
        int n = g.n;
        int r = g.rank;
        int es = dt.bytes();
        int base = k * perRound * es;
        int[] off = roundParts(count, perRound, k, es);
        ByteBuffer[] srcs = new ByteBuffer[n - 1];
        int[] srcOffs = new int[n - 1];
        for (int i = 1; i < n; i++) {
            srcs[i - 1] = g.seg().slot(p, (r + i) % n);
            srcOffs[i - 1] = off[r];
        }
        int at = base + off[r];
        Reductions.reduce(dt, op, b, at, srcs, srcOffs, (off[r + 1] - off[r]) / es, b, at, g.seg().slot(p, r), off[r]);
    }

    /** Copies the peers' reduced parts of round k from their buffers {@code p} into {@code b}. */
    private void copyReduced(ByteBuffer b, DType dt, int count, int perRound, int k, int p) {
        int es = dt.bytes();
        int base = k * perRound * es;
        int[] off = roundParts(count, perRound, k, es);
        for (int i = 1; i < g.n; i++) {
            int q = (g.rank + i) % g.n;
            b.put(base + off[q], g.seg().slot(p, q), off[q], off[q + 1] - off[q]);
        }
    }

    private void smallAllReduce(ByteBuffer b, DType dt, ReduceOp op, int count) {
        ShmSegment s = g.seg();
        int bytes = count * dt.bytes();
        int p = g.buffer();
        s.slot(p, g.rank).put(0, b, 0, bytes);
        g.publish();
        g.awaitAll();
        g.checkDescriptions(false);
        b.put(0, s.slot(p, 0), 0, bytes);
        for (int q = 1; q < g.n; q++) {
            Reductions.accumulate(dt, op, b, 0, s.slot(p, q), 0, count);
        }
        g.nextRound();
    }

    // ---- reduce-scatter ----------------------------------------------------------------------------------

    /** {@code in} holds n blocks of {@code m} elements; {@code out} gets the reduction of block {@code rank}. */
    void reduceScatter(ByteBuffer in, ByteBuffer out, DType dt, ReduceOp op, int m) {
        int n = g.n;
        int r = g.rank;
        int es = dt.bytes();
        ShmSegment s = g.seg();
        g.describe(ShmGroup.OP_REDUCE_SCATTER, dt, op, m, 0);
        int perRound = Math.max(1, g.slotBytes() / (n * es));
        for (int lo = 0, k = 0; lo < m; lo += perRound, k++) {
            int cnt = Math.min(perRound, m - lo);
            int len = cnt * es;
            int p = g.buffer();
            ByteBuffer mine = s.slot(p, r);
            for (int q = 0; q < n; q++) {
                if (q != r) {
                    mine.put(q * len, in, (q * m + lo) * es, len);
                }
            }
            g.publish();
            g.awaitAll();
            if (k == 0) {
                g.checkDescriptions(false);
            }
            ByteBuffer[] srcs = new ByteBuffer[n - 1];
            int[] srcOffs = new int[n - 1];
            for (int i = 1; i < n; i++) {
                srcs[i - 1] = s.slot(p, (r + i) % n);
                srcOffs[i - 1] = r * len;
            }
            Reductions.reduce(dt, op, in, (r * m + lo) * es, srcs, srcOffs, cnt, out, lo * es, null, 0);
            g.nextRound();
        }
    }

    // ---- all-gather --------------------------------------------------------------------------------------

    /** Rank q's block is {@code counts[q]} elements at byte offset {@code off[q]} of {@code out}; own block filled. */
    void allGatherV(ByteBuffer out, int[] off, int[] counts, DType dt) {
        int n = g.n;
        int r = g.rank;
        int es = dt.bytes();
        ShmSegment s = g.seg();
        g.describe(ShmGroup.OP_ALL_GATHER, dt, null, off[n] / es, Arrays.hashCode(counts));
        for (int q = 0; q < n; q++) {
            g.setMeta(ShmGroup.COUNTS + q, counts[q]);
        }
        int max = Arrays.stream(counts).max().orElse(0);
        int perRound = g.slotBytes() / es;
        int k = 0;
        do {
            int lo = k * perRound;
            int p = g.buffer();
            int mine = Math.max(0, Math.min(perRound, counts[r] - lo));
            if (mine > 0) {
                s.slot(p, r).put(0, out, off[r] + lo * es, mine * es);
            }
            g.publish();
            g.awaitAll();
            if (k == 0) {
                g.checkDescriptions(true);
            }
            for (int i = 1; i < n; i++) {
                int q = (r + i) % n;
                int c = Math.max(0, Math.min(perRound, counts[q] - lo));
                if (c > 0) {
                    out.put(off[q] + lo * es, s.slot(p, q), 0, c * es);
                }
            }
            g.nextRound();
            k++;
        } while ((long) k * perRound < max);
    }

    // ---- broadcast, all-to-all, barrier ------------------------------------------------------------------

    void broadcast(ByteBuffer b, DType dt, int count, int root) {
        int r = g.rank;
        int es = dt.bytes();
        ShmSegment s = g.seg();
        g.describe(ShmGroup.OP_BROADCAST, dt, null, count, root);
        int perRound = g.slotBytes() / es;
        for (int lo = 0, k = 0; lo < count; lo += perRound, k++) {
            int len = Math.min(perRound, count - lo) * es;
            int p = g.buffer();
            if (r == root) {
                s.slot(p, r).put(0, b, lo * es, len);
            }
            g.publish();
            if (k == 0 || r == root) {
                g.awaitAll();
            } else {
                g.await(root);
            }
            if (k == 0) {
                g.checkDescriptions(false);
            }
            if (r != root) {
                b.put(lo * es, s.slot(p, root), 0, len);
            }
            g.nextRound();
        }
    }

    /**
     * In the first round every rank publishes its send and receive counts and checks the whole matrix (rank p's
     * receive count from q must be q's send count to p); then each round moves up to slotBytes / n per pair.
     */
    void allToAll(ByteBuffer in, int[] sendCounts, ByteBuffer out, int[] recvCounts, int es, DType dt) {
        int n = g.n;
        int r = g.rank;
        ShmSegment s = g.seg();
        g.describe(ShmGroup.OP_ALL_TO_ALL, dt, null, 0, 0);
        int maxSend = 0;
        for (int q = 0; q < n; q++) {
            g.setMeta(ShmGroup.COUNTS + q, sendCounts[q]);
            g.setMeta(ShmGroup.COUNTS + n + q, recvCounts[q]);
            maxSend = Math.max(maxSend, sendCounts[q]);
        }
        g.setMeta(ShmGroup.AUX, maxSend);
        g.publish();
        g.awaitAll();
        long max = g.checkAllToAll();
        g.nextRound();
        int[] so = new int[n + 1];
        int[] ro = new int[n + 1];
        for (int q = 0; q < n; q++) {
            so[q + 1] = so[q] + sendCounts[q] * es;
            ro[q + 1] = ro[q] + recvCounts[q] * es;
        }
        out.put(ro[r], in, so[r], so[r + 1] - so[r]);
        int perPair = Math.max(1, g.slotBytes() / (n * es));
        int region = perPair * es;
        for (long lo = 0; lo < max; lo += perPair) {
            int p = g.buffer();
            ByteBuffer mine = s.slot(p, r);
            for (int q = 0; q < n; q++) {
                int c = (int) Math.max(0, Math.min(perPair, sendCounts[q] - lo));
                if (q != r && c > 0) {
                    mine.put(q * region, in, so[q] + (int) lo * es, c * es);
                }
            }
            g.publish();
            g.awaitAll();
            for (int i = 1; i < n; i++) {
                int q = (r + i) % n;
                int c = (int) Math.max(0, Math.min(perPair, recvCounts[q] - lo));
                if (c > 0) {
                    out.put(ro[q] + (int) lo * es, s.slot(p, q), r * region, c * es);
                }
            }
            g.nextRound();
        }
    }

}
