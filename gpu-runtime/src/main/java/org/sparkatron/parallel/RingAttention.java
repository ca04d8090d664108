package org.sparkatron.parallel;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.Request;
import org.sparkatron.device.AttentionBlock;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Ring attention over the context-parallel group (Megatron's {@code cp_comm_type = p2p},
 * {@code AttnFuncWithCPAndKVP2P}). Rank r of cp holds chunks r and {@code 2cp-1-r} of every sequence
 * ({@link ContextParallel}); at step i it holds the keys and values of rank {@code j = r - i (mod cp)} and
 * attends its query rows to them by chunk pair:
 * <ul>
 *   <li>i = 0 (its own block): causal attention over its two chunks (their positions increase along the rows);</li>
 *   <li>j &lt; r: both query chunks see all of j's first chunk and none of its second: no mask;</li>
 *   <li>j &gt; r: only the second query chunk sees anything, and all of j's block: no mask;</li>
 * </ul>
 * merging each partial result into the accumulated one with their log-sum-exps
 * ({@link Kernels#attentionMerge}). Before computing a step it posts the receive of the next block from rank
 * r-1 and the send of the current one to rank r+1, so the transfer overlaps the computation. The backward
 * sends the blocks round again, with each block's key/value gradient accumulator travelling with it: rank r
 * adds its contribution to the accumulator of the block it holds and passes it on, and after cp steps every
 * accumulator is back with its owner, complete. The backward uses the final output and log-sum-exp, so the
 * merge needs no backward (flash attention's recipe, as Megatron's).
 *
 * <p>Buffers (activations kind, shared by all layers of the rank): two key/value blocks and two gradient
 * accumulators of {@code [B t, 2 Hkv hd]}, and a partial output and log-sum-exp shaped as the output's.
 * Messages use the CP group's tags 0 (forward blocks), 1 (backward blocks) and 2 (gradient accumulators); every
 * rank of the group issues the same sequence, so FIFO matching per (peer, tag) pairs them. One rank's thread.
 */
final class RingAttention implements AttentionCore {
    private static final int TAG_FORWARD = 0;
    private static final int TAG_BACKWARD = 1;
    private static final int TAG_GRADIENT = 2;

    private final Device device;
    private final Kernels k;
    private final Communicator group;
    private final int cp;
    private final int rank;
    private final int next;
    private final int prev;
    private final Tensor[] kv = new Tensor[2];
    private final Tensor[] dkv = new Tensor[2];
    private Tensor partOut;
    private Tensor partLse;
    private int[] sized; // the (b, t, heads, kvHeads, hd) the buffers are for

    RingAttention(RankContext ctx) {
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.group = ctx.contextParallel().group();
        this.cp = group.size();
        this.rank = group.rank();
        this.next = (rank + 1) % cp;
        this.prev = (rank - 1 + cp) % cp;
    }

    /** Elements of the buffers for micro-batches of {@code b} x {@code t} local rows (what {@link #prepare} allocates). */
    static long bufferElements(int b, int t, int heads, int kvHeads, int hd) {
        long n = (long) b * t;
        return 4 * n * 2L * kvHeads * hd + n * heads * hd + (long) b * heads * t;
    }

    @Override
    public void prepare(int b, int t, int heads, int kvHeads, int hd) {
        int[] key = {b, t, heads, kvHeads, hd};
        if (java.util.Arrays.equals(key, sized)) {
            return;
        }
        close();
        int n = Math.multiplyExact(b, t);
        for (int i = 0; i < 2; i++) {
            kv[i] = f32(n, 2 * kvHeads * hd);
            dkv[i] = f32(n, 2 * kvHeads * hd);
        }
        partOut = f32(n, heads * hd);
        partLse = f32(b, heads, t);
        sized = key;
    }

    private Tensor f32(int... shape) {
        return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
    }

    /** The block of rank {@code j}'s keys and values that this rank's queries see at a step after the first. */
    private AttentionBlock remote(int j, int b, int t, int heads, int kvHeads, int hd) {
        int c = t / 2;
        return j < rank
                ? new AttentionBlock(b, heads, kvHeads, hd, t, 0, t, t, 0, c, AttentionBlock.NO_MASK) // all queries, first kv chunk
                : new AttentionBlock(b, heads, kvHeads, hd, t, c, c, t, 0, t, AttentionBlock.NO_MASK); // second query chunk, all kv
    }

    @Override
    public void forward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        prepare(b, t, heads, kvHeads, hd);
        int width = (heads + 2 * kvHeads) * hd;
        int kvw = 2 * kvHeads * hd;
        int n = b * t;
        device.copy2d(kv[0], 0, kvw, qkv, (long) heads * hd, width, n, kvw); // this rank's block, packed to send
        int hold = 0;
        for (int i = 0; i < cp; i++) {
            Request sent = null;
            Request received = null;
            if (i + 1 < cp) { // the next block arrives while this one is computed
                received = group.irecv(kv[1 - hold], prev, TAG_FORWARD);
                sent = group.isend(kv[hold], next, TAG_FORWARD);
            }
            if (i == 0) {
                k.attentionBlockForward(out, lse, qkv, width, AttentionCore.keysAndValues(qkv, heads, hd), width,
                        AttentionBlock.causal(b, t, heads, kvHeads, hd));
            } else {
                AttentionBlock blk = remote((rank - i + cp) % cp, b, t, heads, kvHeads, hd);
                k.attentionBlockForward(partOut, partLse, qkv, width, kv[hold], kvw, blk);
                k.attentionMerge(out, lse, partOut, partLse, blk);
            }
            if (sent != null) {
                sent.await();
                received.await();
                hold = 1 - hold;
            }
        }
    }

    @Override
    public void backward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads,
                         int hd) {
        prepare(b, t, heads, kvHeads, hd);
        int width = (heads + 2 * kvHeads) * hd;
        int kvw = 2 * kvHeads * hd;
        int n = b * t;
        k.zero(dqkv); // dq accumulates over the blocks; dk, dv arrive complete at the end
        device.copy2d(kv[0], 0, kvw, qkv, (long) heads * hd, width, n, kvw);
        Request[] gradSent = new Request[2];
        Request gradReceived = null;
        int hold = 0;
        for (int i = 0; i < cp; i++) {
            Request sent = null;
            Request received = null;
            if (i + 1 < cp) {
                received = group.irecv(kv[1 - hold], prev, TAG_BACKWARD);
                sent = group.isend(kv[hold], next, TAG_BACKWARD);
            }
            Tensor acc = dkv[i % 2]; // the gradient accumulator of the block held now
            if (i == 0) {
                k.zero(acc); // this rank's own block starts its journey here
            } else {
                gradReceived.await();
            }
            Tensor other = dkv[(i + 1) % 2];
            if (gradSent[(i + 1) % 2] != null) {
                gradSent[(i + 1) % 2].await();
            }
            // the next block's accumulator, or after the last step this rank's own, complete
            gradReceived = group.irecv(other, prev, TAG_GRADIENT);
            if (i == 0) {
                k.attentionBlockBackward(dqkv, width, acc, kvw, dout, out, lse, qkv, width,
                        AttentionCore.keysAndValues(qkv, heads, hd), width, AttentionBlock.causal(b, t, heads, kvHeads, hd));
            } else {
                AttentionBlock blk = remote((rank - i + cp) % cp, b, t, heads, kvHeads, hd);
                k.attentionBlockBackward(dqkv, width, acc, kvw, dout, out, lse, qkv, width, kv[hold], kvw, blk);
            }
            gradSent[i % 2] = group.isend(acc, next, TAG_GRADIENT);
            if (sent != null) {
                sent.await();
                received.await();
                hold = 1 - hold;
            }
        }
        gradReceived.await();
        device.copy2d(dqkv, (long) heads * hd, width, dkv[cp % 2], 0, kvw, n, kvw);
        for (Request r : gradSent) {
            if (r != null) {
                r.await();
            }
        }
    }

    @Override
    public void close() {
        for (int i = 0; i < 2; i++) {
            device.release(kv[i]);
            device.release(dkv[i]);
            kv[i] = null;
            dkv[i] = null;
        }
        device.release(partOut);
        device.release(partLse);
        partOut = null;
        partLse = null;
        sized = null;
    }
}
