package org.sparkatron.comm.shm;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.comm.Request;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.device.HostAccess;
import org.sparkatron.tensor.Tensor;

/**
 * A group whose ranks span hosts, at least one host holding two or more of them: its all-reduce in two levels,
 * as NCCL's and Horovod's hierarchical all-reduce. The ranks of each host reduce through shared memory, one
 * rank per host (the lowest) all-reduces the host sums over TCP with the other hosts' leaders, and each leader
 * broadcasts the result to its host through shared memory.
 *
 * <p>Two hosts (the common case: a data-parallel group across two machines) pipeline the three steps in chunks
 * ({@link #twoHosts}); more hosts run them one after the other, the leaders in a TCP ring.
 *
 * <p>Why: the flat TCP ring sends {@code 2 (n - 1) / n} of the tensor from every rank to the next, so the link
 * between two hosts that each hold {@code k} ranks carries {@code 2 (n - 1) / n} of it in each direction where the
 * ring crosses (1.5 for n = 4, k = 2); the leaders' ring carries {@code 2 (h - 1) / h} over h hosts (1 for two
 * hosts), and the copies within a host go through memory. Results are identical on every rank (the leaders'
 * result is broadcast), and may differ in the last bits from the flat ring's (another reduction order).
 *
 * <p>Sub-groups: the host's ranks and the leaders are TCP sub-groups of the group (no socket opened, nothing sent)
 * with ids {@link #GROUP_ID_BASE} + 3 x the group's id (+ 1 for the leaders, + 2 for the pairs of {@link HostPairs},
 * one id for all pairs since they share no rank); the host's is a shared-memory group
 * set up by its first collective. Threading, blocking and failure: as {@link Communicator}; a failure anywhere
 * fails the world and so these sub-groups' waits too.
 */
final class HostHierarchy implements AutoCloseable {
    /** Sub-group ids of the hierarchy start here, above those of {@link org.sparkatron.comm.ProcessGroups}. */
    static final int GROUP_ID_BASE = 1 << 29;
    /** All-reduces of at least this many bytes go through the hierarchy; below, the flat one-round exchange. */
    static final long MIN_BYTES = 256 << 10;

    /**
     * Chunks of a two-host all-reduce (each at least 1 MiB). Measured with {@code ./sparkatron bench-comm --two-hosts
     * 2gbit}, 4 ranks, 64 MiB: 4 chunks 1.39x Gloo, 8 chunks 1.46x, 16 chunks 1.42x (docs/comm.md).
     */
    static final int CHUNKS = 8;

    /**
     * Relative sizes of a large two-host all-reduce's chunks ({@link #RAMP_MIN_BYTES} and up): small at both ends,
     * because nothing crosses the link while the first chunk is reduced in memory, and nothing but the last chunk's
     * add and broadcast is left once it has crossed; in the middle, chunks as large as {@link #CHUNKS} even ones.
     * Memory moves data about ten times faster than the link, so each chunk may be several times its predecessor.
     */
    private static final int[] RAMP = {1, 4, 8, 8, 8, 8, 8, 8, 8, 4, 1};
    /** From this size on, chunks follow {@link #RAMP} (its smallest chunk, a 66th of the tensor, then 248 KiB or more). */
    static final long RAMP_MIN_BYTES = 16L << 20;

    /** Element offsets of a two-host all-reduce's chunks of a tensor of {@code n} elements, {@code bytes} bytes. */
    static long[] chunkBounds(long n, long bytes) {
        int[] weights;
        if (bytes >= RAMP_MIN_BYTES) {
            weights = RAMP;
        } else {
            weights = new int[(int) Math.max(1, Math.min(CHUNKS, bytes / (1 << 20)))];
            java.util.Arrays.fill(weights, 1);
        }
        int total = java.util.Arrays.stream(weights).sum();
        long[] at = new long[weights.length + 1];
        long sum = 0;
        for (int c = 0; c < weights.length; c++) {
            sum += weights[c];
            at[c + 1] = n * sum / total;
        }
        return at;
    }

    private final int size;
    /** How many hosts the group spans. */
    private final int hosts;
    /** The other host's chunks, at a leader of a two-host group; grown to the largest tensor. */
    private Tensor scratch;
    /** This host's ranks of the group (null when this rank is alone on its host). */
    private final ShmCommunicator local;
    /** The hosts' lowest ranks (null when this rank is not one). */
    private final Communicator leaders;

    /** Non-null when the group is spread evenly over two hosts. */
    private final HostPairs pairs;

    private HostHierarchy(int size, int hosts, ShmCommunicator local, Communicator leaders, HostPairs pairs) {
        this.size = size;
        this.hosts = hosts;
        this.local = local;
        this.leaders = leaders;
        this.pairs = pairs;
    }

    /**
     * The hierarchy of {@code group}, or null when no host holds two of its ranks (or one host holds all: a
     * shared-memory group). Local: needs only the host map every rank already has.
     */
    static HostHierarchy of(TcpCommunicator group, HostMap hosts, ShmOptions opts, int groupId) {
        int n = group.size();
        int[] host = new int[n]; // a host's key: its verified leader's world rank, or -(world rank + 1) alone
        for (int r = 0; r < n; r++) {
            int w = group.worldRank(r);
            host[r] = hosts.hostOf(w) >= 0 ? hosts.hostOf(w) : -(w + 1);
        }
        int me = group.rank();
        int[] mine = java.util.stream.IntStream.range(0, n).filter(r -> host[r] == host[me]).toArray();
        int[] heads = java.util.stream.IntStream.range(0, n)
                .filter(r -> java.util.stream.IntStream.range(0, r).noneMatch(q -> host[q] == host[r])).toArray();
        // fewer heads than ranks: some host holds two of them; one head: all on one host (a shared-memory group)
        if (heads.length == n || heads.length < 2 || groupId >= (Integer.MAX_VALUE - GROUP_ID_BASE) / 3) {
            return null;
        }
        int base = GROUP_ID_BASE + 3 * groupId;
        ShmCommunicator local = mine.length > 1
                ? new ShmCommunicator((TcpCommunicator) group.subGroup(base, mine), hosts, opts, base) : null;
        Communicator leaders = mine[0] == me ? group.subGroup(base + 1, heads) : null;
        HostPairs pairs = null;
        if (heads.length == 2 && 2 * mine.length == n) { // two hosts, as many ranks on each: pair them
            int[] theirs = java.util.stream.IntStream.range(0, n).filter(r -> host[r] != host[me]).toArray();
            int j = java.util.Arrays.binarySearch(mine, me);
            int[] both = {Math.min(me, theirs[j]), Math.max(me, theirs[j])};
            pairs = new HostPairs(n, mine, theirs, local, group.subGroup(base + 2, both)); // one id for every pair: disjoint ranks
        }
        return new HostHierarchy(n, heads.length, local, leaders, pairs);
    }

    /** Reduce-scatter and all-gather in two levels, when the group is spread evenly over two hosts; else null. */
    HostPairs pairs() {
        return pairs;
    }

    /** Whether an all-reduce of {@code t} goes through the hierarchy. */
    boolean takes(Tensor t) {
        return t.byteSize() >= MIN_BYTES;
    }

    /** The group's all-reduce of {@code t} in two levels (see the class comment). */
    void allReduce(Tensor t, ReduceOp op) {
        ReduceOp partial = op == ReduceOp.AVG ? ReduceOp.SUM : op;
        if (hosts == 2) {
            twoHosts(t, partial);
        } else {
            if (local != null) {
                local.allReduce(t, partial); // through memory: every rank of the host holds the host's sum
            }
            if (leaders != null) {
                leaders.allReduce(t, partial); // over TCP, one rank per host
            }
            if (local != null) {
                local.broadcast(t, 0); // the leader is the host's lowest rank: rank 0 of the local group
            }
        }
        if (op == ReduceOp.AVG) {
            try (HostAccess.Scope access = HostAccess.enter()) {
                Reductions.finishAverage(t.dtype(), t.hostBuffer(), 0, Math.toIntExact(t.numel()), size);
            }
        }
    }

    /**
     * Two hosts, pipelined in {@link #CHUNKS} chunks so that the link is busy while each host reduces and
     * broadcasts through memory: a chunk's host sum goes to the other host as soon as it is ready (the leaders
     * swap whole chunks, which moves as many bytes as their two-rank ring and needs no second round), and each
     * leader adds the other's chunk to its own and broadcasts it as it arrives. Both leaders compute {@code a op b}
     * from the same two values, and every op here is commutative in IEEE arithmetic, so the hosts agree bitwise.
     */
    private void twoHosts(Tensor t, ReduceOp op) {
        long n = t.numel();
        long[] at = chunkBounds(n, t.byteSize());
        int chunks = at.length - 1;
        Request[] sent = new Request[chunks];
        Request[] received = new Request[chunks];
        Tensor other = null;
        int peer = leaders != null ? 1 - leaders.rank() : -1;
        if (leaders != null) {
            if (scratch == null || scratch.dtype() != t.dtype() || scratch.numel() < n) {
                scratch = Tensor.allocateHost(t.dtype(), n);
            }
            other = scratch;
        }
        for (int c = 0; c < chunks; c++) {
            Tensor part = t.slice(at[c], at[c + 1] - at[c]);
            if (local != null) {
                local.allReduce(part, op);
            }
            if (leaders != null) {
                received[c] = leaders.irecv(other.slice(at[c], at[c + 1] - at[c]), peer, c);
                sent[c] = leaders.isend(part, peer, c);
            }
        }
        int es = t.dtype().bytes();
        for (int c = 0; c < chunks; c++) {
            Tensor part = t.slice(at[c], at[c + 1] - at[c]);
            if (leaders != null) {
                received[c].await();
                sent[c].await(); // the chunk is ours to change again
                try (HostAccess.Scope access = HostAccess.enter()) {
                    Reductions.accumulate(t.dtype(), op, t.hostBuffer(), Math.toIntExact(at[c] * es), other.hostBuffer(),
                            Math.toIntExact(at[c] * es), Math.toIntExact(at[c + 1] - at[c]));
                }
            }
            if (local != null) {
                local.broadcast(part, 0);
            }
        }
    }

    @Override
    public void close() {
        if (pairs != null) {
            pairs.close();
        }
        if (local != null) {
            local.close();
        }
        if (leaders != null) {
            leaders.close();
        }
    }

    @Override
    public String toString() {
        return "hosts: " + (local != null ? local.size() : 1) + " ranks here" + (leaders != null ? ", leader" : "")
                + (pairs != null ? ", " + pairs : "");
    }
}
