package org.sparkatron.comm;

import org.sparkatron.tensor.Tensor;

/**
 * A group of {@link #size()} ranks that exchange tensors. Implementations: {@code tcp.TcpCommunicator}
 * (CPU, across hosts), {@link SelfCommunicator} (a group of one: every operation is a no-op or a local
 * copy), and the NCCL communicator of the GPU runtime.
 *
 * <h2>Data</h2>
 * Tensors are dense tensors of F32, F64, BF16, F16, I32 or I64 in the memory this communicator works on:
 * host memory for the CPU communicators (which is also the CPU device's memory), device memory for NCCL.
 * Reductions on BF16/F16 compute each partial result in fp32 and round to nearest-even on store. Every
 * rank of a group passes tensors of the same dtype and element counts (per-rank counts where the
 * operation says so); a mismatch is an error that fails the operation, never silent truncation.
 *
 * <h2>Ordering with the rank's device</h2>
 * A communicator operation on device tensors is device work: it is ordered with the kernels and copies
 * the rank issued before it and after it ({@link org.sparkatron.device.Device}), and the host sees its
 * result only after a synchronisation. The CPU communicators complete the operation before returning,
 * which satisfies this; NCCL enqueues it on the rank's stream. Code that uses a result on the host must
 * synchronise first, exactly as for a kernel.
 *
 * <h2>Blocking and ordering between ranks</h2>
 * Collectives (all-reduce, reduce-scatter, all-gather, broadcast, all-to-all, barrier) may block the
 * calling thread until this rank's part is issued or done; either way, once the rank's stream reaches the
 * operation its output is complete and its input may be reused. Every rank of the group calls the same
 * collectives in the same order (as with NCCL and MPI); a communicator runs one collective at a time, so
 * collectives on one communicator must come from one thread at a time. Results of all-reduce are bitwise
 * identical on all ranks.
 *
 * <h2>Concurrency between groups</h2>
 * Collectives of <em>different</em> communicators (different groups of one {@link ProcessGroups}) may run
 * at the same time from different threads: the data-parallel group's bucket reductions on a communication
 * lane's thread while the rank's thread runs tensor- or pipeline-parallel collectives, as Megatron overlaps
 * them. Each group's traffic is kept apart (TCP frames carry the group id, shared-memory groups have
 * segments of their own, NCCL communicators are independent and may be on different streams). Not allowed:
 * two collectives on one communicator at the same time (from two threads, or for NCCL on two streams that
 * no event orders), and ranks issuing one communicator's collectives in different orders. Blocking across
 * groups is the caller's to order: a rank must not wait in one group's collective for something its peers
 * only do after another group's collective that this rank has not yet issued.
 *
 * <p>Point-to-point messages are matched by (sender, tag) in FIFO order: the k-th {@code recv} from peer p
 * with tag t receives the k-th message p sent to this rank with tag t, whatever else is in flight. Sends
 * never wait for the matching receive to be posted (messages that arrive early are buffered), so any
 * number of {@link #isend}/{@link #irecv} may be in flight in both directions without deadlock. Tags are
 * &gt;= 0. Point-to-point calls may come from several threads concurrently, also while another thread runs
 * a collective on a different communicator of the same {@link ProcessGroups}.
 *
 * <h2>Failure</h2>
 * A dead peer, a peer that does not make progress within the communicator's operation timeout, a malformed
 * frame or {@link #abort} fails the communicator: the waiting and every later operation throw
 * {@link CommException} naming the peer at fault. The failure is propagated to the other ranks, so they
 * fail too instead of waiting for their own timeouts. A failed communicator cannot be repaired; the job
 * recreates it (in Spark, by retrying the barrier stage).
 */
public interface Communicator extends AutoCloseable {
    /** This rank's index in the group, in [0, size). */
    int rank();

    int size();

    /** In place: every rank's {@code t} becomes the element-wise reduction of all ranks' {@code t}. */
    void allReduce(Tensor t, ReduceOp op);

    /**
     * {@code in} holds size() equal blocks of {@code out.numel()} elements; rank r's {@code out} becomes
     * the reduction over all ranks of block r. Out of place (no overlap) {@code in} is not modified. In place
     * ({@code out} is exactly block r of {@code in}, as NCCL allows and Megatron's distributed optimizer uses),
     * the other blocks of {@code in} hold undefined partial results afterwards. Any other overlap is refused.
     */
    void reduceScatter(Tensor in, Tensor out, ReduceOp op);

    /** {@code out} (size() x in.numel() elements) becomes the concatenation of all ranks' {@code in}. */
    void allGather(Tensor in, Tensor out);

    /**
     * Uneven all-gather: rank r contributes {@code counts[r]} elements ({@code in.numel() == counts[rank]});
     * {@code out} (sum of counts) becomes the concatenation in rank order. Counts may be zero.
     */
    void allGatherV(Tensor in, Tensor out, int[] counts);

    /** Every rank's {@code t} becomes rank {@code root}'s {@code t}. */
    void broadcast(Tensor t, int root);

    /**
     * All-to-all with uneven splits: {@code in} holds {@code sendCounts[p]} elements for each peer p,
     * contiguous in rank order; {@code out} receives {@code recvCounts[p]} elements from each peer p in rank
     * order. {@code recvCounts[p]} must equal peer p's {@code sendCounts[rank]}. in and out must not overlap.
     */
    void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts);

    /** Blocking send: returns when {@code t} may be reused (not necessarily when the peer received it). */
    default void send(Tensor t, int peer, int tag) {
        isend(t, peer, tag).await();
    }

    /** Blocking receive into {@code t}; the message must have exactly {@code t.byteSize()} bytes. */
    default void recv(Tensor t, int peer, int tag) {
        irecv(t, peer, tag).await();
    }

    /** Non-blocking send; {@code t} must not be modified until the request completes. */
    Request isend(Tensor t, int peer, int tag);

    /** Non-blocking receive; {@code t} must not be read or modified until the request completes. */
    Request irecv(Tensor t, int peer, int tag);

    /** Returns once every rank of the group has entered the barrier. */
    void barrier();

    /**
     * Fails this communicator and every group sharing its connections: pending and later operations throw
     * {@link CommException} with {@code reason}; peers are told (best effort) so they fail fast. Never
     * blocks for long; safe to call from any thread, any number of times.
     */
    void abort(String reason);

    /**
     * A communicator for a subset of this group, given by ranks of this group in increasing order and
     * containing this rank. Every member passes the same {@code groupId} and ranks, and the id is unique
     * among the live groups of this communicator. Implementations reuse existing connections: creating a
     * group opens no socket and sends nothing.
     */
    Communicator subGroup(int groupId, int[] ranks);

    /** Releases connections (for a sub-group: nothing; the parent owns them). Idempotent. */
    @Override
    void close();
}
