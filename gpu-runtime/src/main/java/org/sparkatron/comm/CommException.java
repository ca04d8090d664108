package org.sparkatron.comm;

/**
 * A collective or point-to-point operation failed: a peer died, timed out, sent a malformed frame, failed
 * authentication, or the communicator was aborted. After this exception the communicator is unusable:
 * every pending and later operation on it (and on the groups that share its connections) throws too.
 */
public class CommException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final int peer;

    /** @param peer the world rank of the peer the failure is attributed to, or -1 if none */
    public CommException(String message, int peer, Throwable cause) {
        super(message, cause);
        this.peer = peer;
    }

    public CommException(String message, int peer) {
        this(message, peer, null);
    }

    /** World rank of the peer the failure is attributed to, or -1 when it is not about one peer. */
    public int peer() {
        return peer;
    }
}
