package org.sparkatron.comm.tcp;

import java.nio.ByteBuffer;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Request;

/**
 * One send or receive of one message on one connection. Completed by the connection's reader or writer
 * thread; awaited by the rank's thread. A wait longer than the transport's operation timeout fails the
 * whole transport, naming the peer.
 */
final class Op implements Request {
    final boolean isSend;
    final int peer;
    final int group;
    final int tag;
    final ByteBuffer buf;
    private final TcpTransport transport;
    private final CountDownLatch done = new CountDownLatch(1);

    Op(TcpTransport transport, boolean isSend, int peer, int group, int tag, ByteBuffer buf) {
        this.transport = transport;
        this.isSend = isSend;
        this.peer = peer;
        this.group = group;
        this.tag = tag;
        this.buf = buf;
    }

    void complete() {
        done.countDown();
    }

    @Override
    public boolean isDone() {
        return done.getCount() == 0 || transport.failure() != null;
    }

    @Override
    public void await() {
        long timeoutNs = transport.options().opTimeoutMs * 1_000_000L;
        long start = System.nanoTime();
        try {
            // Wake up periodically to notice a transport failure even if nobody completes this op.
            while (!done.await(50, TimeUnit.MILLISECONDS)) {
                CommException f = transport.failure();
                if (f != null) {
                    throw transport.failedOp(f);
                }
                if (System.nanoTime() - start > timeoutNs) {
                    transport.fail(new CommException("rank " + transport.rank() + " timed out after "
                            + transport.options().opTimeoutMs + " ms waiting for rank " + peer + " to "
                            + (isSend ? "accept " : "send ") + buf.capacity() + " bytes (group " + group
                            + ", tag " + tag + "); rank " + peer + " is dead, stuck or not calling the matching operation",
                            peer));
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CommException("interrupted while waiting for rank " + peer, peer, e);
        }
    }
}
