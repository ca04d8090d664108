package org.sparkatron.comm.tcp;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.tensor.DType;

/**
 * The collective algorithms of one {@link TcpCommunicator}, written against its group-rank send/receive.
 * Buffers are addressed by absolute byte offsets. Not thread-safe (one collective at a time).
 *
 * <p>Ring conventions (n ranks, rank r, left = r-1, right = r+1): the data is cut into n chunks. In
 * reduce-scatter step s (0..n-2) rank r sends chunk r-s-1 and receives chunk r-s-2, so after n-1 steps
 * it holds the full reduction of chunk r. In all-gather step s it sends chunk r-s and receives chunk
 * r-s-1. Each chunk travels as segments of {@link TcpOptions#segmentBytes}; a segment is forwarded as soon
 * as it is reduced, so the n-1 steps overlap like a pipeline.
 */
final class Collectives {
    private final TcpCommunicator c;

    Collectives(TcpCommunicator c) {
        this.c = c;
    }

    private static int mod(int a, int n) {
        return ((a % n) + n) % n;
    }

    /** Byte offsets of n nearly equal chunks of {@code count} elements (n+1 entries). */
    static int[] chunks(int count, int n, int es) {
        int[] off = new int[n + 1];
        for (int i = 0; i < n; i++) {
            off[i + 1] = off[i] + (count / n + (i < count % n ? 1 : 0)) * es;
        }
        return off;
    }

    private int segBytes(int es) {
        return Math.max(es, c.options().segmentBytes / es * es);
    }

    private static void awaitAll(List<Op> ops) {
        for (Op op : ops) {
            op.await();
        }
        ops.clear();
    }

    // ---- all-reduce --------------------------------------------------------------------------------------

    /** One round: everyone sends everything to everyone, then reduces in rank order (identical results). */
    void directAllReduce(ByteBuffer b, DType dt, ReduceOp op, int count) {
        int n = c.size();
        int r = c.rank();
        int bytes = count * dt.bytes();
        int tag = c.nextTag();
        ByteBuffer slots = c.scratch(0, bytes * n);
        List<Op> ops = new ArrayList<>();
        for (int i = 1; i < n; i++) {
            int p = mod(r - i, n);
            ops.add(c.recvFrom(p, tag, slots.slice(p * bytes, bytes)));
        }
        for (int i = 1; i < n; i++) {
            ops.add(c.sendTo(mod(r + i, n), tag, b.slice(0, bytes)));
        }
        slots.put(r * bytes, b, 0, bytes);
        awaitAll(ops);
        for (int p = 1; p < n; p++) {
            Reductions.accumulate(dt, op, slots, 0, slots, p * bytes, count);
        }
        b.put(0, slots, 0, bytes);
    }

    /**
     * Reduce-scatter then all-gather, in place. The all-gather receives are posted first, straight into
     * {@code b}: a segment of the final result can only arrive after this rank's own contribution to it
     * left (it is part of that result), so the receive never overwrites data still to be sent, and no
     * all-gather byte is copied twice.
     */
    void ringAllReduce(ByteBuffer b, DType dt, ReduceOp op, int count) {
        int[] off = chunks(count, c.size(), dt.bytes());
        int rsTag = c.nextTag();
        int agTag = c.nextTag();
        List<List<Op>> agRecvs = postAgRecvs(b, off, segBytes(dt.bytes()), agTag);
        List<Op> ownSent = new ArrayList<>();
        ringReduceScatter(b, null, off, dt, op, rsTag, agTag, ownSent);
        runAg(b, off, segBytes(dt.bytes()), agTag, agRecvs, ownSent);
    }

    // ---- reduce-scatter ----------------------------------------------------------------------------------

    void directReduceScatter(ByteBuffer in, ByteBuffer out, DType dt, ReduceOp op, int m) {
        int n = c.size();
        int r = c.rank();
        int bytes = m * dt.bytes();
        int tag = c.nextTag();
        ByteBuffer slots = c.scratch(0, bytes * n);
        List<Op> ops = new ArrayList<>();
        for (int i = 1; i < n; i++) {
            int p = mod(r - i, n);
            ops.add(c.recvFrom(p, tag, slots.slice(p * bytes, bytes)));
        }
        for (int i = 1; i < n; i++) {
            int p = mod(r + i, n);
            ops.add(c.sendTo(p, tag, in.slice(p * bytes, bytes)));
        }
        slots.put(r * bytes, in, r * bytes, bytes);
        awaitAll(ops);
        for (int p = 1; p < n; p++) {
            Reductions.accumulate(dt, op, slots, 0, slots, p * bytes, m);
        }
        out.put(0, slots, 0, bytes);
    }

    void ringReduceScatter(ByteBuffer in, ByteBuffer out, DType dt, ReduceOp op, int m) {
        ringReduceScatter(in, out, chunks(m * c.size(), c.size(), dt.bytes()), dt, op, c.nextTag(), -1, null);
    }

    /**
     * Ring reduce-scatter in place: rank r's block of {@code b} ends fully reduced; the other blocks hold
     * partial sums afterwards.
     */
    void ringReduceScatterInPlace(ByteBuffer b, DType dt, ReduceOp op, int m) {
        ringReduceScatter(b, null, chunks(m * c.size(), c.size(), dt.bytes()), dt, op, c.nextTag(), -1, null);
    }

    /**
     * Ring reduce-scatter over chunks {@code off}. In place ({@code out == null}): partial sums accumulate in
     * {@code b} itself and rank r's chunk of {@code b} ends fully reduced. Out of place: {@code b} is only
     * read; partial sums live in three rotating scratch buffers (one being received, one being sent, one
     * being reduced) and the last step lands in {@code out}. With {@code ownSent} (all-reduce, in place), each
     * segment of this rank's chunk goes to the right as the first step of the all-gather (tag {@code agTag})
     * as soon as it is fully reduced, instead of after the whole reduce-scatter: the two phases overlap and
     * the links never idle between them. The sends are added to {@code ownSent}.
     */
    private void ringReduceScatter(ByteBuffer b, ByteBuffer out, int[] off, DType dt, ReduceOp op, int tag, int agTag,
                                   List<Op> ownSent) {
        int n = c.size();
        int r = c.rank();
        int es = dt.bytes();
        int seg = segBytes(es);
        int left = mod(r - 1, n);
        int right = mod(r + 1, n);
        boolean inPlace = out == null;
        int maxChunk = 0;
        for (int i = 0; i < n; i++) {
            maxChunk = Math.max(maxChunk, off[i + 1] - off[i]);
        }
        ByteBuffer[] bufs = {c.scratch(0, maxChunk), c.scratch(1, maxChunk), c.scratch(2, maxChunk)};
        List<List<Op>> recvs = new ArrayList<>();
        List<List<Op>> sends = new ArrayList<>();
        for (int s = 0; s < n - 1; s++) {
            recvs.add(new ArrayList<>());
            sends.add(new ArrayList<>());
        }
        // Receives are posted before the matching data can arrive, so it lands in place without a copy: in
        // place, three steps ahead (the buffer of step s is free once step s is reduced); out of place, one
        // step ahead (the buffer of step s is also read by the sends of step s+1).
        int ahead = inPlace ? Math.min(3, n - 1) : 1;
        for (int s = 0; s < ahead; s++) {
            postRsRecvs(s, n, r, off, seg, bufs, out, left, tag, recvs);
        }
        // Step 0 sends this rank's own data for chunk r-1.
        int first = mod(r - 1, n);
        for (int o = off[first]; o < off[first + 1]; o += seg) {
            sends.get(0).add(c.sendTo(right, tag, b.slice(o, Math.min(seg, off[first + 1] - o))));
        }
        for (int s = 0; s < n - 1; s++) {
            if (!inPlace && s + 1 < n - 1) {
                // The buffer step s+1 receives into was last read by the sends of step s-1.
                if (s >= 1) {
                    awaitAll(sends.get(s - 1));
                }
                postRsRecvs(s + 1, n, r, off, seg, bufs, out, left, tag, recvs);
            }
            int ch = mod(r - s - 2, n);
            ByteBuffer rb = (!inPlace && s == n - 2) ? out : bufs[s % 3];
            List<Op> rs = recvs.get(s);
            for (int j = 0, o = off[ch]; o < off[ch + 1]; o += seg, j++) {
                int len = Math.min(seg, off[ch + 1] - o);
                int so = o - off[ch];
                rs.get(j).await();
                if (inPlace) {
                    Reductions.accumulate(dt, op, b, o, rb, so, len / es);
                    if (s + 1 < n - 1) {
                        sends.get(s + 1).add(c.sendTo(right, tag, b.slice(o, len)));
                    } else if (ownSent != null) {
                        ownSent.add(c.sendTo(right, agTag, b.slice(o, len)));
                    }
                } else {
                    Reductions.accumulate(dt, op, rb, so, b, o, len / es);
                    if (s + 1 < n - 1) {
                        sends.get(s + 1).add(c.sendTo(right, tag, rb.slice(so, len)));
                    }
                }
            }
            if (inPlace && s + ahead < n - 1) {
                postRsRecvs(s + ahead, n, r, off, seg, bufs, out, left, tag, recvs);
            }
        }
        for (List<Op> s : sends) {
            awaitAll(s);
        }
    }

    private void postRsRecvs(int s, int n, int r, int[] off, int seg, ByteBuffer[] bufs, ByteBuffer out, int left,
                             int tag, List<List<Op>> recvs) {
        int ch = mod(r - s - 2, n);
        ByteBuffer rb = (out != null && s == n - 2) ? out : bufs[s % 3];
        for (int o = off[ch]; o < off[ch + 1]; o += seg) {
            int len = Math.min(seg, off[ch + 1] - o);
            recvs.get(s).add(c.recvFrom(left, tag, rb.slice(o - off[ch], len)));
        }
    }

    // ---- all-gather --------------------------------------------------------------------------------------

    /** Rank r's block {@code [off[r], off[r+1])} of {@code b} is filled; afterwards all blocks are. */
    void directAllGather(ByteBuffer b, int[] off) {
        int n = c.size();
        int r = c.rank();
        int tag = c.nextTag();
        List<Op> ops = new ArrayList<>();
        for (int i = 1; i < n; i++) {
            int p = mod(r - i, n);
            ops.add(c.recvFrom(p, tag, b.slice(off[p], off[p + 1] - off[p])));
        }
        for (int i = 1; i < n; i++) {
            ops.add(c.sendTo(mod(r + i, n), tag, b.slice(off[r], off[r + 1] - off[r])));
        }
        awaitAll(ops);
    }

    /** In-place ring all-gather of the blocks {@code off} of {@code b}; all receives are posted up front. */
    void ringAllGather(ByteBuffer b, int[] off, int es, int tag) {
        List<List<Op>> recvs = postAgRecvs(b, off, segBytes(es), tag);
        runAg(b, off, segBytes(es), tag, recvs, null);
    }

    /** Receives of all-gather step s (chunk r-s-1 from the left), straight into {@code b}. */
    private List<List<Op>> postAgRecvs(ByteBuffer b, int[] off, int seg, int tag) {
        int n = c.size();
        int r = c.rank();
        int left = mod(r - 1, n);
        List<List<Op>> recvs = new ArrayList<>();
        for (int s = 0; s < n - 1; s++) {
            int ch = mod(r - s - 1, n);
            List<Op> l = new ArrayList<>();
            for (int o = off[ch]; o < off[ch + 1]; o += seg) {
                l.add(c.recvFrom(left, tag, b.slice(o, Math.min(seg, off[ch + 1] - o))));
            }
            recvs.add(l);
        }
        return recvs;
    }

    /**
     * Sends chunk r (unless {@code ownSent} holds those sends already), then forwards each received segment of
     * steps 0..n-3 to the right as it lands.
     */
    private void runAg(ByteBuffer b, int[] off, int seg, int tag, List<List<Op>> recvs, List<Op> ownSent) {
        int n = c.size();
        int r = c.rank();
        int right = mod(r + 1, n);
        List<Op> sends = new ArrayList<>();
        if (ownSent != null) {
            sends.addAll(ownSent);
        } else {
            for (int o = off[r]; o < off[r + 1]; o += seg) {
                sends.add(c.sendTo(right, tag, b.slice(o, Math.min(seg, off[r + 1] - o))));
            }
        }
        for (int s = 0; s < n - 1; s++) {
            int ch = mod(r - s - 1, n);
            List<Op> rs = recvs.get(s);
            for (int j = 0, o = off[ch]; o < off[ch + 1]; o += seg, j++) {
                rs.get(j).await();
                if (s + 1 < n - 1) {
                    sends.add(c.sendTo(right, tag, b.slice(o, Math.min(seg, off[ch + 1] - o))));
                }
            }
        }
        awaitAll(sends);
    }

    // ---- broadcast, all-to-all, barrier ------------------------------------------------------------------

    /** Small: the root sends to everyone. Large: a pipelined chain root -> root+1 -> ... (each link once). */
    void broadcast(ByteBuffer b, int es, int root) {
        int n = c.size();
        int r = c.rank();
        int bytes = b.capacity();
        int tag = c.nextTag();
        List<Op> ops = new ArrayList<>();
        if (bytes <= c.options().smallBytes) {
            if (r == root) {
                for (int i = 1; i < n; i++) {
                    ops.add(c.sendTo(mod(root + i, n), tag, b.slice(0, bytes)));
                }
            } else {
                ops.add(c.recvFrom(root, tag, b.slice(0, bytes)));
            }
            awaitAll(ops);
            return;
        }
        int seg = segBytes(es);
        int pos = mod(r - root, n);
        int next = pos + 1 < n ? mod(r + 1, n) : -1;
        if (pos == 0) {
            for (int o = 0; o < bytes; o += seg) {
                ops.add(c.sendTo(next, tag, b.slice(o, Math.min(seg, bytes - o))));
            }
            awaitAll(ops);
            return;
        }
        int prev = mod(r - 1, n);
        List<Op> recvs = new ArrayList<>();
        for (int o = 0; o < bytes; o += seg) {
            recvs.add(c.recvFrom(prev, tag, b.slice(o, Math.min(seg, bytes - o))));
        }
        for (int j = 0, o = 0; o < bytes; o += seg, j++) {
            recvs.get(j).await();
            if (next >= 0) {
                ops.add(c.sendTo(next, tag, b.slice(o, Math.min(seg, bytes - o))));
            }
        }
        awaitAll(ops);
    }

    /**
     * Pairwise exchange; every pair exchanges one message even when empty, so mismatched counts fail with a
     * size error instead of a wait. Peers are visited in a rotated order so no rank is everyone's first.
     */
    void allToAll(ByteBuffer in, int[] sendCounts, ByteBuffer out, int[] recvCounts, int es) {
        int n = c.size();
        int r = c.rank();
        int[] so = new int[n + 1];
        int[] ro = new int[n + 1];
        for (int p = 0; p < n; p++) {
            so[p + 1] = so[p] + sendCounts[p] * es;
            ro[p + 1] = ro[p] + recvCounts[p] * es;
        }
        if (sendCounts[r] != recvCounts[r]) {
            throw new IllegalArgumentException("allToAll on rank " + r + ": sendCounts[" + r + "]=" + sendCounts[r]
                    + " != recvCounts[" + r + "]=" + recvCounts[r]);
        }
        int tag = c.nextTag();
        List<Op> ops = new ArrayList<>();
        for (int i = 1; i < n; i++) {
            int p = mod(r - i, n);
            ops.add(c.recvFrom(p, tag, out.slice(ro[p], ro[p + 1] - ro[p])));
        }
        for (int i = 1; i < n; i++) {
            int p = mod(r + i, n);
            ops.add(c.sendTo(p, tag, in.slice(so[p], so[p + 1] - so[p])));
        }
        out.put(ro[r], in, so[r], so[r + 1] - so[r]);
        awaitAll(ops);
    }

    /** Dissemination barrier: ceil(log2 n) rounds of empty messages. */
    void barrier() {
        int n = c.size();
        int r = c.rank();
        ByteBuffer empty = ByteBuffer.allocateDirect(0);
        for (int k = 1; k < n; k <<= 1) {
            int tag = c.nextTag();
            Op recv = c.recvFrom(mod(r - k, n), tag, empty.slice());
            Op send = c.sendTo(mod(r + k, n), tag, empty.slice());
            send.await();
            recv.await();
        }
    }
}
