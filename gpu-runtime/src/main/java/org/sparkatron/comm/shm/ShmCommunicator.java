package org.sparkatron.comm.shm;

import java.nio.ByteBuffer;
import java.util.Arrays;
import org.sparkatron.comm.CommArgs;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.comm.Request;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.device.HostAccess;
import org.sparkatron.tensor.Tensor;

/**
 * A {@link Communicator} whose collectives go through shared memory when all of the group's ranks are on
 * one host (threads of one JVM or processes), and through its TCP communicator otherwise. Point-to-point
 * messages, failure detection and propagation (a dead peer's connection drops; {@link #abort} sends ABORT
 * frames) stay with TCP: a rank waiting in shared memory checks the TCP world's state every millisecond, so
 * a failure anywhere fails these waits too, with the same {@link org.sparkatron.comm.CommException}.
 *
 * <p>Created by {@link org.sparkatron.comm.Communicators#connect}; {@link #subGroup} decides per group
 * (a tensor-parallel group inside one host of a multi-host job uses shared memory, the data-parallel group
 * across hosts TCP; a group across hosts with several ranks on a host all-reduces in two levels,
 * {@link HostHierarchy}: through memory within each host, over TCP between one rank per host). Results of all-reduce are bitwise identical on every rank, as required, but may differ
 * in the last bits from the TCP rings' (the reduction order differs, as between NCCL's algorithms).
 *
 * <p>Threading, blocking, ordering and failure: as {@link Communicator} specifies. The segment of a group is
 * set up by its first collective (a TCP exchange among its members), not when the group is created.
 */
public final class ShmCommunicator implements Communicator {
    private final TcpCommunicator tcp;
    private final HostMap hosts;
    private final ShmOptions opts;
    private final ShmGroup group;
    private final ShmCollectives coll;
    /** Non-null when the group's ranks are threads of this JVM: collectives without staging. */
    private final DirectCollectives direct;
    /**
     * Non-null when the group spans hosts and some host holds two or more of its ranks: all-reduce in two levels,
     * and reduce-scatter and all-gather too when two hosts hold as many ranks each ({@link HostPairs}).
     */
    private final HostHierarchy hierarchy;

    ShmCommunicator(TcpCommunicator tcp, HostMap hosts, ShmOptions opts, int groupId) {
        this.tcp = tcp;
        this.hosts = hosts;
        this.opts = opts;
        int[] world = new int[tcp.size()];
        Arrays.setAll(world, tcp::worldRank);
        if (hosts.sameHost(world)) {
            group = new ShmGroup(tcp, opts.dir.resolve(hosts.prefix + "g" + groupId), opts);
            coll = new ShmCollectives(group);
            direct = opts.direct && hosts.sameJvm(world) ? new DirectCollectives(group) : null;
            hierarchy = null;
        } else {
            group = null;
            coll = null;
            direct = null;
            hierarchy = HostHierarchy.of(tcp, hosts, opts, groupId);
        }
    }

    /** Finds which ranks share a host (collective over {@code world}) and wraps the world communicator. */
    public static ShmCommunicator wrap(TcpCommunicator world, ShmOptions opts) {
        return new ShmCommunicator(world, HostMap.discover(world, opts), opts, 0);
    }

    /** Whether this group's ranks share a host (so its collectives may use shared memory). */
    public boolean sharedMemory() {
        return group != null;
    }

    /** Whether this group spans hosts and all-reduces in two levels ({@link HostHierarchy}). */
    public boolean hierarchical() {
        return hierarchy != null;
    }

    /** The TCP communicator underneath (point-to-point, failure state). */
    public TcpCommunicator tcp() {
        return tcp;
    }

    @Override
    public int rank() {
        return tcp.rank();
    }

    @Override
    public int size() {
        return tcp.size();
    }

    private boolean shm() {
        return group != null && group.ready();
    }

    @Override
    public void allReduce(Tensor t, ReduceOp op) {
        if (hierarchy != null && hierarchy.takes(t)) {
            CommArgs.host(t, "allReduce");
            hierarchy.allReduce(t, op);
            return;
        }
        if (!shmFor(t, "allReduce") || t.numel() == 0) {
            tcp.allReduce(t, op);
            return;
        }
        try (HostAccess.Scope access = HostAccess.enter()) {
            group.enter();
            try {
                ByteBuffer b = t.hostBuffer();
                int n = Math.toIntExact(t.numel());
                if (direct != null && t.byteSize() > opts.smallBytes) {
                    direct.allReduce(b, t.address(), t.dtype(), op, n);
                } else {
                    coll.allReduce(b, t.dtype(), op, n);
                }
                if (op == ReduceOp.AVG) {
                    Reductions.finishAverage(t.dtype(), b, 0, n, size());
                }
            } finally {
                group.finish();
                group.exit();
            }
        }
    }

    /** Validates like TCP and says whether shared memory takes the operation. */
    private boolean shmFor(Tensor t, String what) {
        CommArgs.host(t, what);
        return size() > 1 && shm();
    }

    @Override
    public void reduceScatter(Tensor in, Tensor out, ReduceOp op) {
        HostPairs pairs = hierarchy != null ? hierarchy.pairs() : null;
        if (pairs != null && pairs.takes(in)) {
            try (HostAccess.Scope access = HostAccess.enter()) {
                CommArgs.host(in, "reduceScatter input");
                CommArgs.host(out, "reduceScatter output");
                CommArgs.sameDType(in, out);
                CommArgs.numel(in, out.numel() * size(), "reduceScatter input");
                CommArgs.inPlaceBlock(in, out, rank()); // refuses any other overlap
                pairs.reduceScatter(in, out, op);
            }
            return;
        }
        if (!shmFor(in, "reduceScatter input") || out.numel() == 0 || in.dtype() != out.dtype()
                || in.numel() != out.numel() * size()) {
            tcp.reduceScatter(in, out, op);
            return;
        }
        CommArgs.host(out, "reduceScatter output");
        try (HostAccess.Scope access = HostAccess.enter()) {
            group.enter();
            try {
                int m = Math.toIntExact(out.numel());
                ByteBuffer o = out.hostBuffer();
                if (direct != null && out.byteSize() > opts.smallBytes) {
                    direct.reduceScatter(in.hostBuffer(), in.address(), o, in.dtype(), op, m);
                } else {
                    coll.reduceScatter(in.hostBuffer(), o, in.dtype(), op, m);
                }
                if (op == ReduceOp.AVG) {
                    Reductions.finishAverage(out.dtype(), o, 0, m, size());
                }
            } finally {
                group.finish();
                group.exit();
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
        HostPairs pairs = hierarchy != null ? hierarchy.pairs() : null;
        if (pairs != null && Arrays.stream(counts).allMatch(c -> c == counts[0]) && pairs.takes(out)) {
            try (HostAccess.Scope access = HostAccess.enter()) {
                CommArgs.host(in, "allGather input");
                CommArgs.host(out, "allGather output");
                CommArgs.sameDType(in, out);
                CommArgs.counts(counts, size(), "counts");
                CommArgs.numel(in, counts[rank()], "allGather input of rank " + rank());
                CommArgs.numel(out, (long) counts[0] * size(), "allGather output");
                pairs.allGather(in, out);
            }
            return;
        }
        if (!shmFor(in, "allGather input")) {
            tcp.allGatherV(in, out, counts);
            return;
        }
        CommArgs.host(out, "allGather output");
        CommArgs.sameDType(in, out);
        long total = CommArgs.counts(counts, size(), "counts");
        CommArgs.numel(in, counts[rank()], "allGather input of rank " + rank());
        CommArgs.numel(out, total, "allGather output");
        if (total == 0) {
            return;
        }
        try (HostAccess.Scope access = HostAccess.enter()) {
            group.enter();
            try {
                int es = in.dtype().bytes();
                int[] off = new int[size() + 1];
                for (int r = 0; r < size(); r++) {
                    off[r + 1] = Math.addExact(off[r], Math.multiplyExact(counts[r], es));
                }
                ByteBuffer o = out.hostBuffer();
                o.put(off[rank()], in.hostBuffer(), 0, counts[rank()] * es);
                if (direct != null && out.byteSize() > opts.smallBytes) {
                    direct.allGatherV(o, out.address(), off, counts, in.dtype());
                } else {
                    coll.allGatherV(o, off, counts, in.dtype());
                }
            } finally {
                group.finish();
                group.exit();
            }
        }
    }

    @Override
    public void broadcast(Tensor t, int root) {
        if (!shmFor(t, "broadcast") || t.numel() == 0 || root < 0 || root >= size()) {
            tcp.broadcast(t, root);
            return;
        }
        try (HostAccess.Scope access = HostAccess.enter()) {
            group.enter();
            try {
                if (direct != null && t.byteSize() > opts.smallBytes) {
                    direct.broadcast(t.hostBuffer(), t.address(), t.dtype(), Math.toIntExact(t.numel()), root);
                } else {
                    coll.broadcast(t.hostBuffer(), t.dtype(), Math.toIntExact(t.numel()), root);
                }
            } finally {
                group.finish();
                group.exit();
            }
        }
    }

    @Override
    public void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts) {
        if (!shmFor(in, "allToAll input")) {
            tcp.allToAll(in, sendCounts, out, recvCounts);
            return;
        }
        CommArgs.host(out, "allToAll output");
        CommArgs.sameDType(in, out);
        CommArgs.numel(in, CommArgs.counts(sendCounts, size(), "sendCounts"), "allToAll input");
        CommArgs.numel(out, CommArgs.counts(recvCounts, size(), "recvCounts"), "allToAll output");
        if (sendCounts[rank()] != recvCounts[rank()]) {
            throw new IllegalArgumentException("allToAll on rank " + rank() + ": sendCounts[" + rank() + "]="
                    + sendCounts[rank()] + " != recvCounts[" + rank() + "]=" + recvCounts[rank()]);
        }
        try (HostAccess.Scope access = HostAccess.enter()) {
            group.enter();
            try {
                // Every rank must take the same path whatever its own sizes: in one JVM always the direct one.
                if (direct != null) {
                    direct.allToAll(in.hostBuffer(), sendCounts, out.hostBuffer(), out.address(), recvCounts, in.dtype());
                } else {
                    coll.allToAll(in.hostBuffer(), sendCounts, out.hostBuffer(), recvCounts, in.dtype().bytes(), in.dtype());
                }
            } finally {
                group.finish();
                group.exit();
            }
        }
    }

    @Override
    public Request isend(Tensor t, int peer, int tag) {
        return tcp.isend(t, peer, tag);
    }

    @Override
    public Request irecv(Tensor t, int peer, int tag) {
        return tcp.irecv(t, peer, tag);
    }

    @Override
    public void barrier() {
        if (size() == 1 || !shm()) {
            tcp.barrier();
            return;
        }
        group.enter();
        try {
            group.barrier();
        } finally {
            group.finish();
            group.exit();
        }
    }

    @Override
    public void abort(String reason) {
        tcp.abort(reason);
    }

    @Override
    public Communicator subGroup(int groupId, int[] ranks) {
        TcpCommunicator sub = (TcpCommunicator) tcp.subGroup(groupId, ranks);
        return new ShmCommunicator(sub, hosts, opts, groupId);
    }

    @Override
    public void close() {
        if (group != null) {
            group.close();
        }
        if (hierarchy != null) {
            hierarchy.close();
        }
        tcp.close();
    }

    @Override
    public String toString() {
        return "rank " + rank() + " of " + size() + (group != null ? " (shared memory, " + opts + ")"
                : hierarchy != null ? " (TCP between hosts, shared memory within: " + hierarchy + ")" : " (TCP)");
    }
}
