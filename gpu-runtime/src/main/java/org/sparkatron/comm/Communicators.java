package org.sparkatron.comm;

import org.sparkatron.comm.shm.ShmCommunicator;
import org.sparkatron.comm.shm.ShmOptions;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;

/**
 * The one way ranks connect: a TCP mesh (authenticated, works across hosts, carries point-to-point and
 * failures), with collectives through shared memory for every group whose ranks turn out to share a host,
 * chosen automatically when the world is created (see {@link ShmCommunicator}). Ranks as threads of one JVM
 * (Spark {@code local[N]}, several ranks per executor) and as processes of one host both qualify.
 */
public final class Communicators {
    private Communicators() {
    }

    /**
     * Connects rank {@code rank} of {@code size}; blocks until every rank is connected (see
     * {@link TcpCommunicator#create}) and, unless {@code shm} is off, until the ranks have found out which of
     * them share a host (three small all-gathers). A world of one is a {@link SelfCommunicator}.
     */
    public static Communicator connect(int rank, int size, Rendezvous rendezvous, byte[] secret, TcpOptions tcp,
                                       ShmOptions shm) {
        if (size == 1) {
            return new SelfCommunicator();
        }
        TcpCommunicator world = TcpCommunicator.create(rank, size, rendezvous, secret, tcp);
        if (!shm.enabled) {
            return world;
        }
        try {
            return ShmCommunicator.wrap(world, shm);
        } catch (RuntimeException e) {
            world.abort("shared-memory set-up failed on rank " + rank + ": " + e);
            world.close();
            throw e;
        }
    }

    /** {@link #connect} with the default shared-memory settings (on where {@code /dev/shm} exists). */
    public static Communicator connect(int rank, int size, Rendezvous rendezvous, byte[] secret, TcpOptions tcp) {
        return connect(rank, size, rendezvous, secret, tcp, ShmOptions.defaults());
    }
}
