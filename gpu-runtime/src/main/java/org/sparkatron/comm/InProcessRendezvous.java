package org.sparkatron.comm;

import java.util.ArrayList;
import java.util.List;

/**
 * Rendezvous for ranks that are threads of one JVM (tests, Spark {@code local[N]}). Create one instance
 * per job and hand {@link #forRank(int)} to each rank's thread. Rounds are matched by call order: the
 * k-th {@code allGather} of every rank forms round k.
 *
 * <p>Blocking: a rank waits until all ranks have published for its round, at most {@code timeoutMs};
 * then it throws {@link CommException} naming the ranks that did not arrive. Thread-safe.
 */
public final class InProcessRendezvous {
    private final int size;
    private final long timeoutMs;
    private final List<byte[][]> rounds = new ArrayList<>();

    public InProcessRendezvous(int size, long timeoutMs) {
        if (size < 1) {
            throw new IllegalArgumentException("rendezvous size must be >= 1, got " + size);
        }
        this.size = size;
        this.timeoutMs = timeoutMs;
    }

    /** The view of rank {@code rank}; keep one per rank (it counts that rank's rounds). */
    public Rendezvous forRank(int rank) {
        if (rank < 0 || rank >= size) {
            throw new IllegalArgumentException("rank " + rank + " outside [0, " + size + ")");
        }
        return new Rendezvous() {
            private int round;

            @Override
            public int rank() {
                return rank;
            }

            @Override
            public int size() {
                return size;
            }

            @Override
            public byte[][] allGather(byte[] mine) {
                return exchange(round++, rank, mine);
            }
        };
    }

    private synchronized byte[][] exchange(int round, int rank, byte[] mine) {
        while (rounds.size() <= round) {
            rounds.add(new byte[size][]);
        }
        byte[][] slots = rounds.get(round);
        slots[rank] = mine.clone();
        notifyAll();
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        while (missing(slots) != null) {
            long left = (deadline - System.nanoTime()) / 1_000_000L;
            if (left <= 0) {
                throw new CommException("rendezvous round " + round + ": rank " + rank + " waited " + timeoutMs
                        + " ms; ranks that never arrived: " + missing(slots), -1);
            }
            try {
                wait(left);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new CommException("rendezvous interrupted on rank " + rank, -1, e);
            }
        }
        byte[][] out = new byte[size][];
        for (int r = 0; r < size; r++) {
            out[r] = slots[r].clone();
        }
        return out;
    }

    private List<Integer> missing(byte[][] slots) {
        List<Integer> m = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            if (slots[r] == null) {
                m.add(r);
            }
        }
        return m.isEmpty() ? null : m;
    }
}
