package org.sparkatron.comm;

/**
 * Handle of a non-blocking send or receive ({@link Communicator#isend}, {@link Communicator#irecv}).
 * Thread-safe; {@link #await()} may be called any number of times from any thread.
 */
public interface Request {
    /**
     * Blocks until the operation completed. For a send, the tensor may be reused afterwards; for a
     * receive, the data is in the tensor. Throws {@link CommException} if the communicator failed or
     * was aborted, or if the wait exceeded the communicator's operation timeout (naming the peer).
     */
    void await();

    /** True once the operation completed or failed; never blocks. */
    boolean isDone();

    /** A request that is already complete (used for empty messages and groups of one). */
    Request DONE = new Request() {
        @Override
        public void await() {
        }

        @Override
        public boolean isDone() {
            return true;
        }
    };
}
