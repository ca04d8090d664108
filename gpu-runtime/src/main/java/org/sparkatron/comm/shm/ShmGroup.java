package org.sparkatron.comm.shm;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.locks.LockSupport;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.tensor.DType;
import org.sparkatron.comm.tcp.TcpCommunicator;

/**
 * The shared-memory state of one group on one rank: its mapped {@link ShmSegment}, this rank's progress
 * counter and the round counter. Set up on the group's first collective (so creating a group still sends
 * nothing): group rank 0 creates the file, the others map it, and the members agree over TCP whether every
 * one of them succeeded; if one did not (no space in {@code /dev/shm}), the whole group keeps using TCP.
 * Once all have mapped it the file is unlinked, so a crashed job leaves nothing behind.
 *
 * <p>Progress: every rank runs the same sequence of steps for the same collectives, and after each step it
 * publishes its counter (release); a rank reads a peer's slot only after seeing (acquire) that the peer's
 * counter reached the same value. Waiting spins briefly, then yields, then parks for growing intervals (the
 * cores are usually shared with other ranks and processes), checking every millisecond for a failure of the
 * group's TCP world (a dead or aborting peer) and for the operation timeout, which fails the world naming
 * the peer that did not arrive.
 *
 * <p>Not thread-safe: one group's collectives come from one thread at a time.
 */
final class ShmGroup implements AutoCloseable {
    static final int OP_ALL_REDUCE = 1;
    static final int OP_REDUCE_SCATTER = 2;
    static final int OP_ALL_GATHER = 3;
    static final int OP_BROADCAST = 4;
    static final int OP_ALL_TO_ALL = 5;
    static final int OP_BARRIER = 6;
    private static final String[] NAMES = {"?", "allReduce", "reduceScatter", "allGather", "broadcast", "allToAll",
        "barrier"};
    /** Meta words: 0-3 the description, AUX.. 4 words of addresses or sizes, COUNTS.. 2n words of counts. */
    static final int AUX = 4;
    static final int COUNTS = 8;
    private static final int CORES = Runtime.getRuntime().availableProcessors();

    final TcpCommunicator tcp;
    final int rank;
    final int n;
    private final Path file;
    private final ShmOptions opts;
    /** Busy-wait budget: spinning only helps when every rank can have a core; otherwise yield soon, then park. */
    private final int spins;
    private final int yields;
    private ShmSegment seg;
    private boolean fallback;
    private long seq;
    /** Rounds so far modulo ShmSegment.BUFFERS: the staging buffer of the current round. */
    private int round;
    /** Collectives begun on this group: the parity of the description area in use. */
    private long ops;
    private volatile boolean inOp;
    private boolean closed;

    ShmGroup(TcpCommunicator tcp, Path file, ShmOptions opts) {
        this.tcp = tcp;
        this.rank = tcp.rank();
        this.n = tcp.size();
        this.file = file;
        this.opts = opts;
        this.spins = n <= CORES ? 200 : 0;
        this.yields = n <= CORES ? 2000 : 50;
    }

    int slotBytes() {
        return opts.slotBytes;
    }

    int smallBytes() {
        return opts.smallBytes;
    }

    /** Whether collectives of this group go through shared memory (sets the segment up on the first call). */
    boolean ready() {
        if (seg != null) {
            return true;
        }
        if (fallback || closed) {
            return false;
        }
        String created = null;
        ShmSegment s = null;
        if (rank == 0) {
            try {
                s = ShmSegment.create(file, n, opts.slotBytes);
            } catch (IOException | RuntimeException e) {
                created = e.toString();
            }
        }
        long[] step2;
        try {
            long[] step1 = HostMap.allGather(tcp, new long[] {created == null ? 1 : 0});
            if (step1[0] == 1 && rank != 0) {
                try {
                    s = ShmSegment.open(file, n, opts.slotBytes);
                } catch (IOException | RuntimeException e) {
                    s = null;
                }
            }
            step2 = HostMap.allGather(tcp, new long[] {s != null ? 1 : 0});
        } catch (RuntimeException e) {
            if (s != null) {
                s.close();
            }
            throw e;
        } finally {
            if (rank == 0) {
                try {
                    Files.deleteIfExists(file);
                } catch (IOException e) {
                    // the mapping keeps working; the file goes with the next reboot
                }
            }
        }
        for (long ok : step2) {
            if (ok != 1) {
                fallback = true;
            }
        }
        if (fallback) {
            if (s != null) {
                s.close();
            }
            if (rank == 0) {
                System.getLogger("org.sparkatron.comm.shm").log(System.Logger.Level.WARNING, "group of " + n
                        + " ranks keeps TCP: shared memory in " + opts.dir + " unavailable"
                        + (created != null ? " (" + created + ")" : " on some rank"));
            }
            return false;
        }
        seg = s;
        return true;
    }

    ShmSegment seg() {
        return seg;
    }

    void enter() {
        CommException f = tcp.failure();
        if (f != null) {
            throw f;
        }
        if (closed) {
            throw new CommException("communicator of rank " + rank + " is closed", -1);
        }
        inOp = true;
    }

    void exit() {
        inOp = false;
    }

    // ---- descriptions -------------------------------------------------------------------------------------

    /**
     * Descriptions alternate between two areas: a rank that finished collective j may write its description
     * of j+1 while a slower one still reads those of j, but it cannot begin j+2 before the slower one
     * published in j+1, after its reads.
     */
    private int mp() {
        return (int) (ops & 1);
    }

    /** Ends a collective (also one that failed its checks, identically on every rank). */
    void finish() {
        ops++;
    }

    long meta(int q, int i) {
        return seg.meta(mp(), q, i);
    }

    void setMeta(int i, long v) {
        seg.setMeta(mp(), rank, i, v);
    }

    /** Writes this rank's description of the collective it begins (read by the others after the first wait). */
    void describe(int op, DType dt, ReduceOp rop, long count, long extra) {
        setMeta(0, op);
        setMeta(1, ((long) dt.ordinal() << 8) | (rop == null ? 0xff : rop.ordinal()));
        setMeta(2, count);
        setMeta(3, extra);
    }

    /**
     * After the first wait of a collective: every rank compares every description (and with {@code countsToo}
     * the n counts) with rank 0's, in the same order, so all ranks throw the same error or none does.
     */
    void checkDescriptions(boolean countsToo) {
        for (int q = 0; q < n; q++) {
            boolean same = true;
            for (int i = 0; i < 4; i++) {
                same &= meta(q, i) == meta(0, i);
            }
            for (int i = 0; countsToo && i < n; i++) {
                same &= meta(q, COUNTS + i) == meta(0, COUNTS + i);
            }
            if (!same) {
                nextRound();
                throw new IllegalArgumentException("ranks called mismatched collectives: rank 0 " + describeOf(0)
                        + ", rank " + q + " " + describeOf(q));
            }
        }
    }

    /**
     * All-to-all's check: same op and dtype everywhere (word 2 is each rank's largest send count and may
     * differ), and rank p's receive count from q equals q's send count to p, for every pair.
     *
     * @return the largest send count of any rank
     */
    long checkAllToAll() {
        long max = 0;
        for (int q = 0; q < n; q++) {
            if (meta(q, 0) != meta(0, 0) || meta(q, 1) != meta(0, 1)) {
                nextRound();
                throw new IllegalArgumentException("ranks called mismatched collectives: rank 0 " + describeOf(0)
                        + ", rank " + q + " " + describeOf(q));
            }
            max = Math.max(max, meta(q, AUX));
            for (int p = 0; p < n; p++) {
                if (meta(p, COUNTS + n + q) != meta(q, COUNTS + p)) {
                    nextRound();
                    throw new IllegalArgumentException("allToAll counts disagree: rank " + p + " expects "
                            + meta(p, COUNTS + n + q) + " elements from rank " + q + ", which sends it "
                            + meta(q, COUNTS + p));
                }
            }
        }
        return max;
    }

    private String describeOf(int q) {
        int op = (int) meta(q, 0);
        long t = meta(q, 1);
        String name = op > 0 && op < NAMES.length ? NAMES[op] : "op " + op;
        DType dt = DType.values()[(int) (t >> 8) % DType.values().length];
        String rop = (t & 0xff) == 0xff ? "" : " " + ReduceOp.values()[(int) (t & 0xff) % ReduceOp.values().length];
        return name + rop + " of " + meta(q, 2) + " " + dt + " elements" + (op == OP_BROADCAST ? " from root "
                + meta(q, 3) : "");
    }

    /** Barrier: one publish and wait. */
    void barrier() {
        describe(OP_BARRIER, DType.I32, null, 0, 0);
        publish();
        awaitAll();
        checkDescriptions(false);
        nextRound();
    }

    // ---- progress ----------------------------------------------------------------------------------------

    /**
     * Which of the {@link ShmSegment#BUFFERS} staging buffers the current round uses (successive rounds take
     * them in turn, across collectives too). A round of the lockstep collectives writes its buffer, publishes,
     * waits, reads; the pipelined all-reduce (see ShmCollectives) lets a round's buffer be read until the end
     * of the next round, so a buffer is reused only three rounds later, when every reader provably moved on.
     */
    int buffer() {
        return round;
    }

    /** The buffer {@code ahead} rounds after the current one. */
    int buffer(int ahead) {
        return (round + ahead) % ShmSegment.BUFFERS;
    }

    /** Ends a round: the next one uses the next buffers. */
    void nextRound() {
        round = (round + 1) % ShmSegment.BUFFERS;
    }

    /** Marks this rank's writes so far as done (release). */
    void publish() {
        seg.setFlag(rank, ++seq);
    }

    /** Waits until every peer published as often as this rank. */
    void awaitAll() {
        for (int i = 1; i < n; i++) {
            await((rank + i) % n);
        }
    }

    /** Waits until peer {@code q} published as often as this rank. */
    void await(int q) {
        long v = seq;
        if (seg.flag(q) >= v) {
            return;
        }
        int tries = 0;
        long start = 0;
        long nextCheck = 0;
        long park = 2_000;
        while (seg.flag(q) < v) {
            tries++;
            if (tries < spins) {
                Thread.onSpinWait();
                continue;
            }
            long now = System.nanoTime();
            if (start == 0) {
                start = now;
                nextCheck = now + 1_000_000;
            }
            if (now >= nextCheck) {
                nextCheck = now + 1_000_000;
                CommException f = tcp.failure();
                if (f != null) {
                    throw f;
                }
                long timeoutMs = tcp.options().opTimeoutMs;
                if (now - start > timeoutMs * 1_000_000L) {
                    tcp.failBecauseOf(q, "rank " + tcp.worldRank(rank) + " timed out after " + timeoutMs
                            + " ms waiting in shared memory for rank " + tcp.worldRank(q) + " (it is at step " + seg.flag(q)
                            + ", this rank at " + v + "); rank " + tcp.worldRank(q)
                            + " is dead, stuck or not calling the matching collective");
                    throw tcp.failure();
                }
            }
            if (tries < spins + yields) {
                Thread.yield();
            } else {
                LockSupport.parkNanos(park);
                park = Math.min(park * 2, 200_000);
            }
        }
    }

    /** Unlinks nothing (done at set-up); unmaps unless a collective is still running on another thread. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (seg != null && !inOp && tcp.failure() == null) {
            seg.close();
        }
        seg = null;
    }
}
