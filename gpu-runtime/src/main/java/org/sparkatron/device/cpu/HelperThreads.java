package org.sparkatron.device.cpu;

import java.util.concurrent.ConcurrentLinkedDeque;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;

/**
 * The process-wide helper threads of {@link CpuWorkers}: a task handed to {@link #start} runs on an idle helper,
 * or on a new one when none is idle.
 *
 * <p>Why not an {@link java.util.concurrent.ExecutorService}: a helper that has parked takes 50-75 microseconds
 * (median, p90; up to 2 ms) to start the next task in this VM, and a training step hands out about 200 kernels'
 * pieces back to back; the caller then waits at the end of each kernel for the helper's late piece. So a helper
 * that finishes a task first spins for {@link #SPIN_NANOS} watching for the next one (a task handed to a spinning
 * helper starts within a few microseconds), and only then parks. The spin is bounded and short: unlike OpenBLAS's
 * workers (about 0.1 s of spinning after each call, which took the core from the kernels that ran between GEMMs),
 * a helper gives its core back 0.2 ms after the last kernel piece.
 *
 * <p>Threads: helpers are daemon threads named {@code sparkatron-cpu-kernels-N}, created on demand (several ranks
 * of one JVM share them; a nested kernel piece that splits again takes further helpers) and ended after
 * {@link #IDLE_SECONDS} without work. Idle helpers are taken most recently idle first, so the one still spinning is
 * preferred. Tasks must not throw (CpuWorkers' tasks catch everything); one that does ends its helper only.
 */
final class HelperThreads {
    /** How long a helper watches for its next task before parking. */
    static final long SPIN_NANOS = 200_000;
    /** A helper without work for this long ends. */
    static final long IDLE_SECONDS = 60;

    private static final AtomicInteger NAMES = new AtomicInteger();
    private static final ConcurrentLinkedDeque<Helper> IDLE = new ConcurrentLinkedDeque<>();

    private HelperThreads() {
    }

    /** Runs {@code task} on a helper thread; returns at once. */
    static void start(Runnable task) {
        Helper h;
        while ((h = IDLE.pollFirst()) != null) {
            if (h.hand(task)) {
                return;
            }
        }
        h = new Helper();
        h.task = task;
        h.start();
    }

    private static final class Helper extends Thread {
        private volatile Runnable task;
        private volatile boolean retired;

        Helper() {
            super("sparkatron-cpu-kernels-" + NAMES.incrementAndGet());
            setDaemon(true);
        }

        /** Gives this idle helper its next task; false if it has just retired (the caller takes another). */
        boolean hand(Runnable r) {
            synchronized (this) {
                if (retired) {
                    return false;
                }
                task = r;
            }
            LockSupport.unpark(this); // a permit if it is still spinning: harmless
            return true;
        }

        @Override
        public void run() {
            Runnable r = task;
            while (r != null) {
                task = null;
                r.run();
                IDLE.offerFirst(this);
                r = awaitTask();
            }
        }

        /** The next task, or null once idle for {@link #IDLE_SECONDS} (then retired and out of the idle list). */
        private Runnable awaitTask() {
            long spinEnd = System.nanoTime() + SPIN_NANOS;
            Runnable r;
            while ((r = task) == null && System.nanoTime() < spinEnd) {
                Thread.onSpinWait();
            }
            long idleEnd = System.nanoTime() + TimeUnit.SECONDS.toNanos(IDLE_SECONDS);
            while (r == null) {
                long left = idleEnd - System.nanoTime();
                if (left <= 0) {
                    synchronized (this) {
                        if (task == null) { // no caller has handed us work: leave (hand() now refuses)
                            retired = true;
                            IDLE.remove(this);
                            return null;
                        }
                    }
                } else {
                    LockSupport.parkNanos(this, left);
                }
                r = task;
            }
            return r;
        }
    }
}
