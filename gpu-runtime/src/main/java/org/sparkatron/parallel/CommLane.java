package org.sparkatron.parallel;

import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.sparkatron.comm.CommException;

/**
 * An ordered lane for communicator operations that run while the rank's compute continues: Megatron's
 * asynchronous gradient reductions. {@link #submit} issues an operation after all device work issued so far
 * and returns at once; the operation runs concurrently with the work issued after it; {@link Pending#await}
 * orders what is issued next after the operation. Operations on one lane run one at a time, in submission
 * order, so the communicators they use are used by one thread at a time.
 *
 * <ul>
 *   <li>CPU ({@link #thread}): the CPU device finishes every call before returning, so the work issued so far
 *       is done when {@code submit} is called; the operation runs on the lane's own thread (the TCP
 *       communicator's collectives block their caller), and {@code await} blocks the rank's thread until it
 *       finished. A wait for the lane is not a device synchronisation.</li>
 *   <li>GPU: a lane is the device's communication stream; {@code submit} makes that stream wait for an event
 *       recorded on the compute stream and queues the collective there, and {@code await} makes the compute
 *       stream wait for an event recorded after it; nothing blocks the host.</li>
 *   <li>{@link #inline}: the operation runs at once on the caller's thread (no overlap).</li>
 * </ul>
 *
 * <p>Failure: an operation's exception (a failed peer) is rethrown by {@code await} (a {@link CommException}
 * as itself); later submissions still run. Threading: one rank's thread submits and awaits.
 */
public interface CommLane extends AutoCloseable {
    /** Issues {@code op} (communicator operations on device tensors) after the device work issued so far. */
    Pending submit(Runnable op);

    /** Stops the lane after the operations submitted so far; idempotent. */
    @Override
    void close();

    /** A submitted operation. */
    interface Pending {
        /** Orders the rank's later work after the operation; rethrows its failure. */
        void await();

        /** Already complete (nothing to wait for). */
        Pending DONE = () -> {
        };
    }

    /**
     * The lane for ranks on {@code device}: its communication queue where it has one (a GPU's second
     * communication stream), else a thread of its own named {@code name} (the CPU device).
     */
    static CommLane forDevice(org.sparkatron.device.Device device, String name) {
        org.sparkatron.device.Device.CommunicationQueue q = device.communicationQueue();
        if (q == null) {
            return thread(name);
        }
        return new CommLane() {
            @Override
            public Pending submit(Runnable op) {
                return q.issue(op)::orderCompute;
            }

            @Override
            public void close() {
            }
        };
    }

    /** Runs each operation at once on the caller's thread: no overlap. */
    static CommLane inline() {
        return new CommLane() {
            @Override
            public Pending submit(Runnable op) {
                op.run();
                return Pending.DONE;
            }

            @Override
            public void close() {
            }
        };
    }

    /** A lane with its own (daemon) thread, for ranks on the CPU device. */
    static CommLane thread(String name) {
        return new ThreadLane(name);
    }

    /** The CPU lane: a single-thread executor. */
    final class ThreadLane implements CommLane {
        private final ExecutorService exec;

        ThreadLane(String name) {
            this.exec = Executors.newSingleThreadExecutor(r -> {
                Thread t = new Thread(r, name);
                t.setDaemon(true);
                return t;
            });
        }

        @Override
        public Pending submit(Runnable op) {
            Future<?> f = exec.submit(op);
            return () -> {
                try {
                    f.get();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new CommException("interrupted while waiting for a data-parallel reduction", -1, e);
                } catch (ExecutionException e) {
                    Throwable c = e.getCause();
                    if (c instanceof RuntimeException re) {
                        throw re;
                    }
                    if (c instanceof Error err) {
                        throw err;
                    }
                    throw new CommException("data-parallel reduction failed: " + c, -1, c);
                }
            };
        }

        @Override
        public void close() {
            exec.shutdown();
        }
    }
}
