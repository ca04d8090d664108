package org.sparkatron.comm.tcp;

import org.sparkatron.device.HostAccess;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import org.sparkatron.comm.CommArgs;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.comm.Rendezvous;
import org.sparkatron.comm.Request;
import org.sparkatron.tensor.Tensor;

/**
 * {@link Communicator} over TCP for CPU ranks, across hosts. The world communicator ({@link #create}) owns a
 * full mesh of authenticated connections; {@link #subGroup} views share them, tagging every frame with the
 * group id, so creating a group opens no socket and sends nothing.
 *
 * <p>Algorithms ({@link Collectives}): at or below {@link TcpOptions#smallBytes} per rank a one-round direct
 * exchange (every rank reduces the contributions in rank order, so results are identical everywhere);
 * above it bandwidth-optimal rings (reduce-scatter then all-gather for all-reduce; a pipelined chain for
 * broadcast), cut into {@link TcpOptions#segmentBytes} segments so that sending, receiving and reducing
 * overlap. Pairwise direct exchange for all-to-all. Received data goes straight into its destination
 * whenever the receive was posted before the data arrived (rings post them ahead).
 *
 * <p>Threading, blocking, ordering and failure: as specified by {@link Communicator}. Each world rank has
 * one reader and one writer thread per peer; operation waits are bounded by
 * {@link TcpOptions#opTimeoutMs}; a failure anywhere fails this rank's world and all its groups and is
 * forwarded to the other ranks.
 */
public final class TcpCommunicator implements Communicator {
    private final TcpTransport transport;
    private final int groupId;
    private final int[] worldRanks;
    private final int rank;
    private final boolean owner;
    private final Collectives coll;
    private int seq;
    private final ByteBuffer[] scratch = new ByteBuffer[3];
    private volatile boolean closed;

    private TcpCommunicator(TcpTransport transport, int groupId, int[] worldRanks, boolean owner) {
        this.transport = transport;
        this.groupId = groupId;
        this.worldRanks = worldRanks;
        this.owner = owner;
        int me = -1;
        for (int i = 0; i < worldRanks.length; i++) {
            if (worldRanks[i] == transport.rank()) {
                me = i;
            }
        }
        this.rank = me;
        this.coll = new Collectives(this);
    }

    /**
     * Connects rank {@code rank} of {@code size} to all others: binds a listener, publishes its endpoint
     * through {@code rendezvous}, connects and authenticates with {@code secret} (at least 16 bytes; the
     * same for the whole job, secret from everyone outside it). Blocks until every connection is up;
     * throws {@link CommException} naming a missing or rejected rank after the connect timeout.
     */
    public static TcpCommunicator create(int rank, int size, Rendezvous rendezvous, byte[] secret, TcpOptions options) {
        if (size < 1 || rank < 0 || rank >= size) {
            throw new IllegalArgumentException("rank " + rank + " outside world of size " + size);
        }
        TcpTransport t = TcpTransport.connect(rank, size, rendezvous, secret, options);
        int[] all = new int[size];
        Arrays.setAll(all, i -> i);
        t.registerGroup(0);
        return new TcpCommunicator(t, 0, all, true);
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return worldRanks.length;
    }

    /** World rank of this group's rank {@code r}. */
    public int worldRank(int r) {
        return worldRanks[r];
    }

    /** The options this communicator's world was created with. */
    public TcpOptions options() {
        return transport.options();
    }

    /** The failure of this communicator's world (its first one), or null while it is healthy. */
    public CommException failure() {
        CommException f = transport.failure();
        return f == null ? null : transport.failedOp(f);
    }

    /**
     * Fails this communicator's world as {@link #abort} does, but naming group rank {@code peer} as the rank
     * at fault (a transport layered on this one, e.g. shared memory, that saw {@code peer} time out).
     */
    public void failBecauseOf(int peer, String reason) {
        transport.fail(new CommException(reason, worldRanks[peer]));
    }

    /** Connections rejected while the mesh was built (authentication failures, garbage); for monitoring. */
    public int rejectedConnections() {
        return transport.rejectedConnections();
    }

    /** Next tag of a collective: negative, so it never collides with user point-to-point tags. */
    int nextTag() {
        int t = -1 - (seq & 0x3fffffff);
        seq++;
        return t;
    }

    /** A direct native-order scratch buffer of at least {@code bytes}, reused across collectives. */
    ByteBuffer scratch(int i, int bytes) {
        ByteBuffer b = scratch[i];
        if (b == null || b.capacity() < bytes) {
            b = ByteBuffer.allocateDirect(Math.max(bytes, 64)).order(ByteOrder.nativeOrder());
            scratch[i] = b;
        }
        return b;
    }

    /** Sends {@code bytes} (a slice; not modified) to group rank {@code peer}. */
    Op sendTo(int peer, int tag, ByteBuffer bytes) {
        live();
        return transport.conn(worldRanks[peer]).send(groupId, tag, bytes);
    }

    /** Receives exactly {@code into.remaining()} bytes from group rank {@code peer} into that slice. */
    Op recvFrom(int peer, int tag, ByteBuffer into) {
        live();
        return transport.conn(worldRanks[peer]).recv(groupId, tag, into);
    }

    void live() {
        CommException f = transport.failure();
        if (f != null) {
            throw transport.failedOp(f);
        }
        if (closed) {
            throw new CommException("communicator (group " + groupId + ") of rank " + transport.rank() + " is closed", -1);
        }
    }

    @Override
    public void allReduce(Tensor t, ReduceOp op) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(t, "allReduce");
            live();
            if (size() == 1 || t.numel() == 0) {
                return;
            }
            ByteBuffer b = t.hostBuffer();
            int n = Math.toIntExact(t.numel());
            if (t.byteSize() <= options().smallBytes || n < size()) {
                coll.directAllReduce(b, t.dtype(), op, n);
            } else {
                coll.ringAllReduce(b, t.dtype(), op, n);
            }
            if (op == ReduceOp.AVG) {
                Reductions.finishAverage(t.dtype(), b, 0, n, size());
            }
        }
    }

    @Override
    public void reduceScatter(Tensor in, Tensor out, ReduceOp op) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(in, "reduceScatter input");
            CommArgs.host(out, "reduceScatter output");
            CommArgs.sameDType(in, out);
            CommArgs.numel(in, out.numel() * size(), "reduceScatter input");
            live();
            if (size() == 1) {
                CommArgs.copy(in, out);
                return;
            }
            if (out.numel() == 0) {
                return;
            }
            int m = Math.toIntExact(out.numel());
            ByteBuffer o = out.hostBuffer();
            boolean inPlace = CommArgs.inPlaceBlock(in, out, rank);
            if (out.byteSize() <= options().smallBytes) {
                coll.directReduceScatter(in.hostBuffer(), o, in.dtype(), op, m); // reads every input block before writing out
            } else if (inPlace) {
                coll.ringReduceScatterInPlace(in.hostBuffer(), in.dtype(), op, m);
            } else {
                coll.ringReduceScatter(in.hostBuffer(), o, in.dtype(), op, m);
            }
            if (op == ReduceOp.AVG) {
                Reductions.finishAverage(out.dtype(), o, 0, m, size());
            }
        }
    }

    @Override
    public void allGather(Tensor in, Tensor out) {
        int[] counts = new int[size()];
        Arrays.fill(counts, Math.toIntExact(in.numel()));
        allGatherV(in, out, counts);
    }

    @Override
    public void allGatherV(Tensor in, Tensor out, int[] counts) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(in, "allGather input");
            CommArgs.host(out, "allGather output");
            CommArgs.sameDType(in, out);
            long total = CommArgs.counts(counts, size(), "counts");
            CommArgs.numel(in, counts[rank], "allGather input of rank " + rank);
            CommArgs.numel(out, total, "allGather output");
            live();
            int es = in.dtype().bytes();
            int[] off = new int[size() + 1];
            for (int r = 0; r < size(); r++) {
                off[r + 1] = off[r] + counts[r] * es;
            }
            ByteBuffer o = out.hostBuffer();
            Tensor mine = new Tensor(out.storage(), out.byteOffset() + off[rank], out.dtype(), counts[rank]);
            CommArgs.copy(in, mine);
            if (size() == 1 || total == 0) {
                return;
            }
            int maxCount = Arrays.stream(counts).max().orElse(0);
            if ((long) maxCount * es <= options().smallBytes) {
                coll.directAllGather(o, off);
            } else {
                coll.ringAllGather(o, off, es, nextTag());
            }
        }
    }

    @Override
    public void broadcast(Tensor t, int root) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(t, "broadcast");
            if (root < 0 || root >= size()) {
                throw new IllegalArgumentException("broadcast root " + root + " outside group of size " + size());
            }
            live();
            if (size() == 1 || t.numel() == 0) {
                return;
            }
            coll.broadcast(t.hostBuffer(), t.dtype().bytes(), root);
        }
    }

    @Override
    public void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(in, "allToAll input");
            CommArgs.host(out, "allToAll output");
            CommArgs.sameDType(in, out);
            CommArgs.numel(in, CommArgs.counts(sendCounts, size(), "sendCounts"), "allToAll input");
            CommArgs.numel(out, CommArgs.counts(recvCounts, size(), "recvCounts"), "allToAll output");
            if (size() == 1 && sendCounts[0] != recvCounts[0]) {
                throw new IllegalArgumentException("allToAll with self: sendCounts[0]=" + sendCounts[0]
                        + " != recvCounts[0]=" + recvCounts[0]);
            }
            live();
            coll.allToAll(in.hostBuffer(), sendCounts, out.hostBuffer(), recvCounts, in.dtype().bytes());
        }
    }

    @Override
    public Request isend(Tensor t, int peer, int tag) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(t, "send");
            CommArgs.peer(peer, size(), rank);
            CommArgs.tag(tag);
            return sendTo(peer, tag, t.hostBuffer());
        }
    }

    @Override
    public Request irecv(Tensor t, int peer, int tag) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(t, "recv");
            CommArgs.peer(peer, size(), rank);
            CommArgs.tag(tag);
            return recvFrom(peer, tag, t.hostBuffer());
        }
    }

    @Override
    public void barrier() {
        live();
        coll.barrier();
    }

    @Override
    public void abort(String reason) {
        transport.fail(new CommException("aborted by rank " + transport.rank() + ": " + reason, transport.rank()));
    }

    @Override
    public Communicator subGroup(int groupId, int[] ranks) {
        live();
        if (groupId <= 0) {
            throw new IllegalArgumentException("sub-group ids must be > 0 (0 is the world), got " + groupId);
        }
        int[] world = new int[ranks.length];
        boolean member = false;
        for (int i = 0; i < ranks.length; i++) {
            if (ranks[i] < 0 || ranks[i] >= size() || (i > 0 && ranks[i] <= ranks[i - 1])) {
                throw new IllegalArgumentException("sub-group ranks must be increasing ranks of this group of size "
                        + size() + ": " + Arrays.toString(ranks));
            }
            world[i] = worldRanks[ranks[i]];
            member |= ranks[i] == rank;
        }
        if (!member) {
            throw new IllegalArgumentException("rank " + rank + " is not in sub-group " + Arrays.toString(ranks));
        }
        transport.registerGroup(groupId);
        return new TcpCommunicator(transport, groupId, world, false);
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (owner) {
            transport.close();
        } else {
            transport.unregisterGroup(groupId);
        }
    }

    /** Test hook: writes raw bytes to world rank {@code peer}'s connection, as a broken peer would. */
    void writeRawForTest(int worldPeer, byte[] bytes) {
        try {
            transport.writeRaw(worldPeer, bytes);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Test hook: this rank stops reading its sockets, as a frozen (SIGSTOPped) process would. */
    void freezeForTest() {
        transport.freezeReaders();
    }

    /** Test hook: drops every connection without a word, as a crashed process would. */
    void crashForTest() {
        transport.crash();
    }
}
