package org.sparkatron.comm;

import org.sparkatron.device.HostAccess;
import org.sparkatron.tensor.Tensor;

/**
 * The group of one rank: collectives are no-ops, or a local copy where input and output differ.
 * Point-to-point needs a peer and is refused. Stateless apart from the abort flag; thread-safe.
 */
public final class SelfCommunicator implements Communicator {
    private volatile String aborted;

    @Override
    public int rank() {
        return 0;
    }

    @Override
    public int size() {
        return 1;
    }

    private void live() {
        if (aborted != null) {
            throw new CommException("communicator aborted: " + aborted, -1);
        }
    }

    @Override
    public void allReduce(Tensor t, ReduceOp op) {
        CommArgs.host(t, "allReduce");
        live();
    }

    @Override
    public void reduceScatter(Tensor in, Tensor out, ReduceOp op) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(in, "reduceScatter input");
            CommArgs.host(out, "reduceScatter output");
            CommArgs.sameDType(in, out);
            CommArgs.numel(in, out.numel(), "reduceScatter input");
            live();
            CommArgs.copy(in, out);
        }
    }

    @Override
    public void allGather(Tensor in, Tensor out) {
        allGatherV(in, out, new int[] {Math.toIntExact(in.numel())});
    }

    @Override
    public void allGatherV(Tensor in, Tensor out, int[] counts) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(in, "allGather input");
            CommArgs.host(out, "allGather output");
            CommArgs.sameDType(in, out);
            long total = CommArgs.counts(counts, 1, "counts");
            CommArgs.numel(in, counts[0], "allGather input");
            CommArgs.numel(out, total, "allGather output");
            live();
            CommArgs.copy(in, out);
        }
    }

    @Override
    public void broadcast(Tensor t, int root) {
        CommArgs.host(t, "broadcast");
        if (root != 0) {
            throw new IllegalArgumentException("broadcast root " + root + " outside group of size 1");
        }
        live();
    }

    @Override
    public void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts) {
        try (HostAccess.Scope access = HostAccess.enter()) {
            CommArgs.host(in, "allToAll input");
            CommArgs.host(out, "allToAll output");
            CommArgs.sameDType(in, out);
            CommArgs.numel(in, CommArgs.counts(sendCounts, 1, "sendCounts"), "allToAll input");
            CommArgs.numel(out, CommArgs.counts(recvCounts, 1, "recvCounts"), "allToAll output");
            if (sendCounts[0] != recvCounts[0]) {
                throw new IllegalArgumentException("allToAll with self: sendCounts[0]=" + sendCounts[0]
                        + " != recvCounts[0]=" + recvCounts[0]);
            }
            live();
            CommArgs.copy(in, out);
        }
    }

    @Override
    public Request isend(Tensor t, int peer, int tag) {
        CommArgs.peer(peer, 1, 0);
        return Request.DONE;
    }

    @Override
    public Request irecv(Tensor t, int peer, int tag) {
        CommArgs.peer(peer, 1, 0);
        return Request.DONE;
    }

    @Override
    public void barrier() {
        live();
    }

    @Override
    public void abort(String reason) {
        aborted = reason;
    }

    @Override
    public Communicator subGroup(int groupId, int[] ranks) {
        if (ranks.length != 1 || ranks[0] != 0) {
            throw new IllegalArgumentException("a group of size 1 has only sub-group [0]");
        }
        return this;
    }

    @Override
    public void close() {
    }
}
