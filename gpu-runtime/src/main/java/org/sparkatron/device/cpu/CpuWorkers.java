package org.sparkatron.device.cpu;

import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import org.sparkatron.device.HostAccess;

/**
 * Runs a CPU kernel's independent parts on several threads: the calling (rank) thread takes part 0, the
 * others run on a process-wide pool of daemon threads, and the call returns when every part is done.
 *
 * <p>How many parts: at most the rank's thread budget ({@link Blas#threads()}, the same number OpenBLAS uses
 * for a large GEMM; {@code threads_per_rank} under Spark), and only as many as the work justifies (a part
 * below about {@link #MIN_ELEMENTS_PER_PART} elements costs more to hand over than it saves: waking a parked
 * thread takes 10-50 microseconds). With one thread per rank, as in {@code local[N]} with N ranks on N
 * cores, everything stays on the calling thread.
 *
 * <p>Results never depend on the number of parts: callers split only work whose elements (or rows, or
 * attention heads) are computed independently, with boundaries that keep each element on the same code path
 * (vector loop or scalar tail) as a single part would; no reduction is ever split across parts.
 *
 * <p>The pool is static like OpenBLAS's own workers: it holds no rank state (a part carries everything it
 * needs), threads are created on demand and end after a minute idle, and several ranks in one JVM share it.
 * Blocking: {@link #run} waits for every part even when the calling thread is interrupted (the parts write
 * into the caller's tensors, which must not be released under them) and then restores the interrupt flag.
 * Failure: the first exception of any part is rethrown on the calling thread once all parts have ended.
 * The caller's {@link HostAccess} mark (inside a device kernel) is carried to the parts, so the strict device
 * lets them touch its memory exactly when it lets the caller.
 */
final class CpuWorkers {
    /** Below this many elements per part the work stays on fewer threads. */
    static final long MIN_ELEMENTS_PER_PART = 1L << 15;
    /** Range boundaries fall on multiples of this many elements (a whole number of vectors of any width). */
    static final int ALIGN = 64;

    private static final AtomicInteger NAMES = new AtomicInteger();
    private static final ExecutorService POOL = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "sparkatron-cpu-kernels-" + NAMES.incrementAndGet());
        t.setDaemon(true);
        return t;
    });

    private CpuWorkers() {
    }

    /** One part of a kernel. */
    interface Part {
        void run(int part);
    }

    /** A range {@code [from, to)} of elements or rows. */
    interface Range {
        void run(int from, int to);
    }

    /** The number of parts for {@code elements} of work split in at most {@code units} pieces. */
    static int parts(long elements, long units) {
        long byWork = Math.max(1, elements / MIN_ELEMENTS_PER_PART);
        return (int) Math.max(1, Math.min(Math.min(Blas.threads(), byWork), units));
    }

    /** Runs parts {@code 0 .. parts-1}, part 0 on the calling thread; see the class comment. */
    static void run(int parts, Part body) {
        if (parts <= 1) {
            body.run(0);
            return;
        }
        Future<?>[] others = new Future<?>[parts - 1];
        boolean deviceWork = HostAccess.allowed(); // the strict device's mark is per thread: carry it to the parts
        for (int p = 1; p < parts; p++) {
            int part = p;
            others[p - 1] = POOL.submit(() -> {
                if (!deviceWork) {
                    body.run(part);
                    return;
                }
                try (HostAccess.Scope a = HostAccess.enter()) {
                    body.run(part);
                }
            });
        }
        Throwable failure = null;
        try {
            body.run(0);
        } catch (Throwable t) {
            failure = t;
        }
        boolean interrupted = false;
        for (Future<?> f : others) {
            while (true) {
                try {
                    f.get();
                    break;
                } catch (InterruptedException e) {
                    interrupted = true; // keep waiting: the part is still writing into our tensors
                } catch (ExecutionException e) {
                    if (failure == null) {
                        failure = e.getCause();
                    }
                    break;
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        if (failure instanceof RuntimeException r) {
            throw r;
        }
        if (failure instanceof Error e) {
            throw e;
        }
        if (failure != null) {
            throw new IllegalStateException("CPU kernel part failed", failure);
        }
    }

    /**
     * Splits {@code [0, n)} into contiguous ranges whose inner boundaries are multiples of {@link #ALIGN},
     * {@code elementsPerItem} elements of work per item, and runs them as parts.
     */
    static void forRange(int n, long elementsPerItem, Range body) {
        int parts = parts((long) n * elementsPerItem, Math.max(1, n / ALIGN));
        if (parts <= 1) {
            body.run(0, n);
            return;
        }
        int step = (n / parts + ALIGN - 1) / ALIGN * ALIGN;
        run(parts, p -> {
            int from = Math.min(n, p * step);
            int to = p == parts - 1 ? n : Math.min(n, from + step);
            if (from < to) {
                body.run(from, to);
            }
        });
    }

    /** Splits {@code [0, rows)} into contiguous row ranges (any boundary), {@code cols} elements of work a row. */
    static void forRows(int rows, long cols, Range body) {
        int parts = parts((long) rows * cols, rows);
        if (parts <= 1) {
            body.run(0, rows);
            return;
        }
        run(parts, p -> {
            int from = (int) ((long) rows * p / parts);
            int to = (int) ((long) rows * (p + 1) / parts);
            if (from < to) {
                body.run(from, to);
            }
        });
    }
}
