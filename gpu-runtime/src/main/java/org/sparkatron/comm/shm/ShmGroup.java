package org.sparkatron.comm.shm;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.locks.LockSupport;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.tcp.TcpCommunicator;

/**
 * The shared-memory state of one group on one rank: its mapped {@link ShmSegment}, this rank's progress
 * counter and the round parity. Set up on the group's first collective (so creating a group still sends
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
    private static final int SPINS = 200;
    private static final int YIELDS = 2000;

    final TcpCommunicator tcp;
    final int rank;
    final int n;
    private final Path file;
    private final ShmOptions opts;
    private ShmSegment seg;
    private boolean fallback;
    private long seq;
    private int round;
    private volatile boolean inOp;
    private boolean closed;

    ShmGroup(TcpCommunicator tcp, Path file, ShmOptions opts) {
        this.tcp = tcp;
        this.rank = tcp.rank();
        this.n = tcp.size();
        this.file = file;
        this.opts = opts;
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

    /** Parity of the current round (which of the two slots each rank uses). */
    int parity() {
        return round & 1;
    }

    /** Ends a round: the next one uses the other slots. */
    void nextRound() {
        round++;
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
        int spins = 0;
        long start = 0;
        long nextCheck = 0;
        long park = 2_000;
        while (seg.flag(q) < v) {
            spins++;
            if (spins < SPINS) {
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
            if (spins < SPINS + YIELDS) {
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
