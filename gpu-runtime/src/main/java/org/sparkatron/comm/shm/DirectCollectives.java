package org.sparkatron.comm.shm;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.bytedeco.javacpp.BytePointer;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.tensor.DType;

/**
 * Collectives for a group whose ranks are threads of one JVM (Spark {@code local[N]}, several ranks per
 * executor): nothing is staged, each rank reads and writes the other ranks' tensors directly, at the
 * addresses they publish in the group's meta area. Two waits per collective, whatever the size: one after
 * the addresses are published (every rank then checks the others' descriptions, so mismatched calls fail
 * before anyone touches anyone's memory), one after the data moved (no rank returns, and so no rank's caller
 * reuses its tensor, while another may still touch it).
 *
 * <p>All-reduce: rank r reduces the r-th of n parts over every rank's tensor, in rank order starting from its
 * own, into its own tensor, then writes that part into every other rank's tensor: each element is reduced
 * once, by one rank, so all ranks get the same bits; each rank reads about its tensor's size and writes
 * about as much, the least any all-reduce can. Not thread-safe (one collective at a time per group).
 */
final class DirectCollectives {
    /** Bytes reduced and then pushed while they are in the cache (L2-sized with room for the inputs). */
    private static final int BLOCK = 64 << 10;
    private final ShmGroup g;

    DirectCollectives(ShmGroup g) {
        this.g = g;
    }

    /** A buffer over {@code bytes} of this process's memory at {@code address} (another rank's tensor). */
    private static ByteBuffer at(long address, int bytes) {
        if (bytes == 0) {
            return ByteBuffer.allocateDirect(0);
        }
        return new Window(address, bytes).asByteBuffer().order(ByteOrder.nativeOrder());
    }

    /** (A named class: inside an anonymous subclass, {@code address} would mean Pointer's own field.) */
    private static final class Window extends BytePointer {
        Window(long at, int length) {
            this.address = at;
            this.limit = length;
            this.capacity = length;
        }
    }

    /** Publishes, waits for everyone, checks the descriptions; returns every rank's word {@code AUX + i} view. */
    private ByteBuffer[] exchange(int auxWord, int bytes, boolean countsToo) {
        g.publish();
        g.awaitAll();
        g.checkDescriptions(countsToo);
        return views(auxWord, bytes);
    }

    private ByteBuffer[] views(int auxWord, int bytes) {
        ByteBuffer[] v = new ByteBuffer[g.n];
        for (int q = 0; q < g.n; q++) {
            if (q != g.rank) {
                v[q] = at(g.meta(q, ShmGroup.AUX + auxWord), bytes);
            }
        }
        return v;
    }

    /** The second wait: every rank finished reading and writing the others' tensors. */
    private void done() {
        g.publish();
        g.awaitAll();
        g.nextRound();
    }

    void allReduce(ByteBuffer b, long address, DType dt, ReduceOp op, int count) {
        int n = g.n;
        int r = g.rank;
        int es = dt.bytes();
        g.describe(ShmGroup.OP_ALL_REDUCE, dt, op, count, 0);
        g.setMeta(ShmGroup.AUX, address);
        ByteBuffer[] peer = exchange(0, count * es, false);
        int[] off = ShmCollectives.parts(count, n, es);
        int len = off[r + 1] - off[r];
        // Block by block, so that what is pushed to the peers is still in this core's cache.
        int block = Math.max(es, BLOCK / es * es);
        for (int lo = off[r]; lo < off[r + 1]; lo += block) {
            int bl = Math.min(block, off[r + 1] - lo);
            for (int i = 1; i < n; i++) {
                Reductions.accumulate(dt, op, b, lo, peer[(r + i) % n], lo, bl / es);
            }
            for (int i = 1; i < n; i++) {
                peer[(r + i) % n].put(lo, b, lo, bl);
            }
        }
        done();
    }

    /** {@code in} holds n blocks of {@code m} elements; {@code out} gets the reduction of block {@code rank}. */
    void reduceScatter(ByteBuffer in, long inAddress, ByteBuffer out, DType dt, ReduceOp op, int m) {
        int n = g.n;
        int r = g.rank;
        int es = dt.bytes();
        int len = m * es;
        g.describe(ShmGroup.OP_REDUCE_SCATTER, dt, op, m, 0);
        g.setMeta(ShmGroup.AUX, inAddress);
        ByteBuffer[] peer = exchange(0, n * len, false);
        out.put(0, in, r * len, len);
        for (int i = 1; i < n; i++) {
            Reductions.accumulate(dt, op, out, 0, peer[(r + i) % n], r * len, m);
        }
        done();
    }

    /** Rank q's block: {@code counts[q]} elements at byte {@code off[q]} of {@code out}; this rank's is filled. */
    void allGatherV(ByteBuffer out, long outAddress, int[] off, int[] counts, DType dt) {
        int n = g.n;
        int r = g.rank;
        g.describe(ShmGroup.OP_ALL_GATHER, dt, null, off[n] / dt.bytes(), java.util.Arrays.hashCode(counts));
        for (int q = 0; q < n; q++) {
            g.setMeta(ShmGroup.COUNTS + q, counts[q]);
        }
        g.setMeta(ShmGroup.AUX, outAddress);
        ByteBuffer[] peer = exchange(0, off[n], true);
        int len = off[r + 1] - off[r];
        for (int i = 1; i < n && len > 0; i++) {
            peer[(r + i) % n].put(off[r], out, off[r], len);
        }
        done();
    }

    void broadcast(ByteBuffer b, long address, DType dt, int count, int root) {
        int bytes = count * dt.bytes();
        g.describe(ShmGroup.OP_BROADCAST, dt, null, count, root);
        g.setMeta(ShmGroup.AUX, address);
        g.publish();
        g.awaitAll();
        g.checkDescriptions(false);
        if (g.rank != root) {
            b.put(0, at(g.meta(root, ShmGroup.AUX), bytes), 0, bytes);
        }
        done();
    }

    /** Each rank writes its block for q straight into q's output, at q's offset for this sender. */
    void allToAll(ByteBuffer in, int[] sendCounts, ByteBuffer out, long outAddress, int[] recvCounts, DType dt) {
        int n = g.n;
        int r = g.rank;
        int es = dt.bytes();
        g.describe(ShmGroup.OP_ALL_TO_ALL, dt, null, 0, 0);
        int maxSend = 0;
        for (int q = 0; q < n; q++) {
            g.setMeta(ShmGroup.COUNTS + q, sendCounts[q]);
            g.setMeta(ShmGroup.COUNTS + n + q, recvCounts[q]);
            maxSend = Math.max(maxSend, sendCounts[q]);
        }
        g.setMeta(ShmGroup.AUX, maxSend);
        g.setMeta(ShmGroup.AUX + 1, outAddress);
        g.publish();
        g.awaitAll();
        g.checkAllToAll();
        int[] so = new int[n + 1];
        for (int q = 0; q < n; q++) {
            so[q + 1] = so[q] + sendCounts[q] * es;
        }
        for (int i = 0; i < n; i++) {
            int q = (r + i) % n;
            long at = 0;
            long total = 0;
            for (int p = 0; p < n; p++) {
                long c = g.meta(q, ShmGroup.COUNTS + n + p);
                at += p < r ? c : 0;
                total += c;
            }
            int len = so[q + 1] - so[q];
            if (len == 0) {
                continue;
            }
            ByteBuffer dst = q == r ? out : at(g.meta(q, ShmGroup.AUX + 1), Math.toIntExact(total * es));
            dst.put(Math.toIntExact(at * es), in, so[q], len);
        }
        done();
    }
}
