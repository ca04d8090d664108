package org.sparkatron.device.cpu;

import org.sparkatron.device.HostAccess;

/**
 * Runs a CPU kernel's independent pieces on several threads: the calling (rank) thread takes pieces from the
 * front of the list, the helpers from the back, each taking its next piece when it has finished the last, and
 * the call returns when every piece is done.
 *
 * <p>Why pieces taken as threads free up, not one fixed part per thread: the threads do not start, nor run, at
 * the same time. A helper that had parked started its part 50-75 microseconds (median, p90; up to 2 ms) after
 * it was handed over, and the caller then waited for that part at the end of the kernel: a 2-thread call of
 * 200 microseconds of work a thread took 272-278 (a step hands out about 200 such calls). Now the caller
 * takes over pieces the helper has not started, the helpers spin briefly for their next task
 * ({@link HelperThreads}) and the caller spins briefly for the helper's last piece: the same call takes 201-202
 * microseconds back to back and 236-239 after a 0.5 ms gap (docs/benchmarks.md, Issue 23 fifth part). Only
 * who runs a piece changes, never its boundaries: they depend on the work's shape and the thread budget alone,
 * so the bits are the same whichever thread computes a piece, and the same every run. (More, smaller pieces of
 * the GEMMs, to balance cores running at different speeds, were tried and made the step no faster: each piece
 * packs the other operand again.)
 *
 * <p>How many threads: at most the rank's thread budget ({@link Blas#threads()}, the same number OpenBLAS uses
 * for a large GEMM; {@code threads_per_rank} under Spark), and only as many as the work justifies (a part
 * below about {@link #MIN_ELEMENTS_PER_PART} elements costs more to hand over than it saves). With one thread
 * per rank, as in {@code local[N]} with N ranks on N cores, everything stays on the calling thread.
 *
 * <p>Results never depend on the number of pieces or threads: callers split only work whose elements (or rows,
 * or attention heads) are computed independently, with boundaries that keep each element on the same code path
 * (vector loop or scalar tail) as a single piece would; no reduction is ever split across pieces. (A GEMM split
 * by {@link Blas} is the exception its Javadoc states: its bits depend on the boundaries, which depend on the
 * thread budget.)
 *
 * <p>The helpers are static like OpenBLAS's own workers ({@link HelperThreads}): they hold no rank state (a piece
 * carries everything it needs), are created on demand and end after a minute idle, and several ranks in one JVM
 * share them.
 * Blocking: {@link #runPieces} returns once every piece has ended, even when the calling thread is interrupted
 * (the pieces write into the caller's tensors, which must not be released under them), and then restores the
 * interrupt flag; a helper that starts after the last piece was taken finds nothing to do and is not waited
 * for. Failure: no piece starts after one has failed; the first exception is rethrown on the calling thread
 * once the pieces already running have ended. The caller's {@link HostAccess} mark (inside a device kernel) is
 * carried to the helpers, so the strict device lets them touch its memory exactly when it lets the caller.
 */
final class CpuWorkers {
    /** Below this many elements per part the work stays on fewer threads. */
    static final long MIN_ELEMENTS_PER_PART = 1L << 15;
    /** Range boundaries fall on multiples of this many elements (a whole number of vectors of any width). */
    static final int ALIGN = 64;
    /**
     * Pieces per thread for element and row ranges: enough that the thread that ends first takes over what the
     * other has not started (a quarter of its share at most), few enough that each piece is still long work.
     */
    static final int PIECES_PER_THREAD = 4;

    private CpuWorkers() {
    }

    /** One piece of a kernel, run on the thread in {@code slot} ({@code 0 .. threads-1}; 0 is the caller). */
    interface Piece {
        void run(int piece, int slot);
    }

    /** A range {@code [from, to)} of elements or rows. */
    interface Range {
        void run(int from, int to);
    }

    /** The number of threads for {@code elements} of work split in at most {@code units} pieces. */
    static int parts(long elements, long units) {
        long byWork = Math.max(1, elements / MIN_ELEMENTS_PER_PART);
        return (int) Math.max(1, Math.min(Math.min(Blas.threads(), byWork), units));
    }

    /**
     * Runs pieces {@code 0 .. pieces-1} on at most {@code threads} threads (the caller and {@code threads - 1}
     * helpers, never more threads than pieces); see the class comment. A piece's {@code slot} is the thread's,
     * so per-thread scratch indexed by slot is never used by two pieces at once.
     */
    static void runPieces(int threads, int pieces, Piece body) {
        int helpers = Math.min(threads, pieces) - 1;
        if (helpers <= 0) {
            for (int i = 0; i < pieces; i++) {
                body.run(i, 0);
            }
            return;
        }
        Job job = new Job(pieces, body);
        boolean deviceWork = HostAccess.allowed(); // the strict device's mark is per thread: carry it to the helpers
        for (int s = 1; s <= helpers; s++) {
            int slot = s;
            HelperThreads.start(() -> {
                if (!deviceWork) {
                    job.work(slot, false);
                    return;
                }
                try (HostAccess.Scope a = HostAccess.enter()) {
                    job.work(slot, false);
                }
            });
        }
        job.work(0, true);
        job.awaitAll();
        Throwable failure = job.failure;
        if (failure instanceof RuntimeException r) {
            throw r;
        }
        if (failure instanceof Error e) {
            throw e;
        }
        if (failure != null) {
            throw new IllegalStateException("CPU kernel piece failed", failure);
        }
    }

    /** The pieces of one {@link #runPieces} call: a list taken from both ends, and a count of those ended. */
    private static final class Job {
        private final Piece body;
        private int front;
        private int back;
        private int ended; // pieces taken and finished (or failed); guarded by this
        private int taken;
        private Throwable failure;
        private volatile boolean complete;

        Job(int pieces, Piece body) {
            this.body = body;
            this.back = pieces - 1;
        }

        private synchronized int take(boolean fromFront) {
            if (front > back || failure != null) {
                return -1;
            }
            taken++;
            return fromFront ? front++ : back--;
        }

        void work(int slot, boolean fromFront) {
            for (int i; (i = take(fromFront)) >= 0; ) {
                Throwable t = null;
                try {
                    body.run(i, slot);
                } catch (Throwable e) {
                    t = e;
                }
                ended(t);
            }
        }

        private synchronized void ended(Throwable t) {
            if (t != null && failure == null) {
                failure = t;
            }
            ended++;
            if (ended == taken && (front > back || failure != null)) {
                complete = true;
                notifyAll();
            }
        }

        /**
         * Waits until every piece taken has ended and none is left to take (or one failed): a short spin first
         * (a helper's last piece usually ends within microseconds of the caller's), then a wait.
         */
        void awaitAll() {
            long spinEnd = System.nanoTime() + HelperThreads.SPIN_NANOS;
            while (!complete && System.nanoTime() < spinEnd) {
                Thread.onSpinWait();
            }
            if (complete) {
                return;
            }
            boolean interrupted = false;
            synchronized (this) {
                while (!complete) {
                    try {
                        wait(); // keep waiting when interrupted: the pieces are still writing into our tensors
                    } catch (InterruptedException e) {
                        interrupted = true;
                    }
                }
            }
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /**
     * Splits {@code [0, n)} into contiguous ranges whose inner boundaries are multiples of {@link #ALIGN},
     * {@code elementsPerItem} elements of work per item, and runs them as pieces.
     */
    static void forRange(int n, long elementsPerItem, Range body) {
        int threads = parts((long) n * elementsPerItem, Math.max(1, n / ALIGN));
        if (threads <= 1) {
            body.run(0, n);
            return;
        }
        int pieces = Math.max(threads, Math.min(threads * PIECES_PER_THREAD, n / ALIGN));
        int step = (n / pieces + ALIGN - 1) / ALIGN * ALIGN;
        int used = (n + step - 1) / step;
        runPieces(threads, used, (p, slot) -> body.run(p * step, Math.min(n, (p + 1) * step)));
    }

    /** Splits {@code [0, rows)} into contiguous row ranges (any boundary), {@code cols} elements of work a row. */
    static void forRows(int rows, long cols, Range body) {
        int threads = parts((long) rows * cols, rows);
        if (threads <= 1) {
            body.run(0, rows);
            return;
        }
        int pieces = Math.min(rows, threads * PIECES_PER_THREAD);
        runPieces(threads, pieces, (p, slot) -> {
            int from = (int) ((long) rows * p / pieces);
            int to = (int) ((long) rows * (p + 1) / pieces);
            if (from < to) {
                body.run(from, to);
            }
        });
    }
}
