package org.sparkatron.comm.nccl;

import static org.bytedeco.cuda.global.nccl.ncclCommAbort;

import java.time.Duration;
import java.util.ArrayDeque;
import org.bytedeco.cuda.nccl.ncclComm;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Request;
import org.sparkatron.device.cuda.CudaEvent;

/**
 * Follows a communicator's queued NCCL operations so that no rank hangs: a daemon thread polls, every
 * 20 ms, NCCL's asynchronous error and the event behind the oldest unfinished operation. An error, an
 * operation older than the timeout, or {@link #abort} calls {@code ncclCommAbort} (which makes the stuck
 * NCCL kernels return) and records the cause; from then on {@link #failure()} names it, and requests
 * throw it.
 *
 * <p>Thread-safe.
 */
final class NcclWatchdog implements AutoCloseable {
    private record Op(String what, CudaEvent done, long deadlineNanos) {
    }

    private final String name;
    private final ncclComm comm;
    private final long timeoutNanos;
    private final ArrayDeque<Op> pending = new ArrayDeque<>();
    private final Thread thread;
    private volatile String failure;
    private volatile boolean stopped;
    /**
     * Guarded by {@code this}: set once the communicator is aborted or handed back to be destroyed. Both free
     * it, so nothing may touch {@code comm} afterwards: a second {@code ncclCommAbort} (an abort and then a
     * close, say) is a use after free that kills the JVM inside NCCL.
     */
    private boolean released;

    NcclWatchdog(String name, ncclComm comm, Duration timeout) {
        this.name = name;
        this.comm = comm;
        this.timeoutNanos = timeout.toNanos();
        this.thread = new Thread(this::run, name + " watchdog");
        thread.setDaemon(true);
        thread.start();
    }

    /** The cause of failure, or null while the communicator is healthy. */
    String failure() {
        return failure;
    }

    /** Follows an operation whose completion {@code done} marks; the returned request waits for it. */
    Request follow(String what, CudaEvent done) {
        Op op = new Op(what, done, System.nanoTime() + timeoutNanos);
        synchronized (pending) {
            pending.add(op);
        }
        return new Request() {
            @Override
            public void await() {
                while (!isDone()) {
                    try {
                        Thread.sleep(1);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        throw new CommException(name + ": interrupted while waiting for " + what, -1, e);
                    }
                }
                if (failure != null) {
                    throw new CommException(name + ": " + what + " failed: " + failure, -1);
                }
            }

            @Override
            public boolean isDone() {
                if (failure != null) {
                    return true;
                }
                synchronized (pending) {
                    return !pending.contains(op);
                }
            }
        };
    }

    /** Aborts the communicator with {@code reason} (any thread, any number of times). */
    void abort(String reason) {
        synchronized (this) {
            if (released) {
                return;
            }
            released = true;
            failure = reason;
            ncclCommAbort(comm);
        }
        drain();
    }

    /**
     * Hands the communicator back for {@code ncclCommDestroy}: true if it is still healthy and not aborted (the
     * caller then destroys it), false if it was aborted (NCCL freed it already). After this nothing here
     * touches it. Call after {@link #close}.
     */
    synchronized boolean release() {
        if (released) {
            return false;
        }
        released = true;
        return true;
    }

    /** NCCL's asynchronous error, or 0 once the communicator is released (never a call on a freed one). */
    private synchronized int asyncError() {
        return released ? 0 : NcclCommunicator.asyncError(comm);
    }

    private void drain() {
        synchronized (pending) {
            for (Op op : pending) {
                op.done().close();
            }
            pending.clear();
        }
    }

    private void run() {
        try {
            watch();
        } catch (RuntimeException | Error e) {
            // a watchdog that dies silently would let the rank hang: fail the communicator instead
            if (!stopped) {
                abort("the NCCL watchdog failed: " + e);
            }
        }
    }

    private void watch() {
        while (!stopped && failure == null) {
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                return;
            }
            int err = asyncError();
            if (err != 0 && err != 7) { // 7: ncclInProgress is not an error
                abort("NCCL reported asynchronous error " + err + " (a peer failed or the network broke)");
                return;
            }
            String why = null;
            synchronized (pending) {
                while (!pending.isEmpty() && pending.peek().done().isDone()) {
                    pending.poll().done().close();
                }
                Op oldest = pending.peek();
                if (oldest != null && System.nanoTime() > oldest.deadlineNanos()) {
                    why = oldest.what() + " did not complete within " + Duration.ofNanos(timeoutNanos).toMillis()
                            + " ms (a peer is missing or stuck)";
                }
            }
            if (why != null) {
                abort(why);
                return;
            }
        }
    }

    @Override
    public void close() {
        stopped = true;
        thread.interrupt();
        try {
            thread.join(1000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        if (failure == null) {
            drain();
        }
    }
}
