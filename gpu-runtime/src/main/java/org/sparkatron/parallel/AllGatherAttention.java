package org.sparkatron.parallel;

import java.util.Arrays;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.AttentionBlock;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Attention over the context-parallel group by all-gather (Megatron's {@code cp_comm_type = all_gather},
 * {@code AttnFuncWithCPAndKVAllGather}): every rank gathers the whole key/value sequence, reorders it from
 * rank order (each rank's two chunks) into sequence order, and attends each of its two query chunks to the
 * prefix it may see: chunk r (positions {@code [r c, (r+1) c)}) to keys {@code [0, (r+1) c)} with the causal
 * mask shifted by {@code r c}, chunk {@code 2cp-1-r} to keys {@code [0, (2cp-r) c)} shifted by
 * {@code (2cp-1-r) c}. The backward gathers again (nothing of the full sequence is kept between passes),
 * computes the key/value gradient of the whole sequence, reorders it back into rank order and
 * reduce-scatters it (sum), so each rank gets its own chunks' gradient.
 *
 * <p>Simpler than the ring and one collective per pass, but each rank holds the whole sequence's keys and
 * values (and, in the backward, their gradient) while a layer's attention runs: buffers (activations kind,
 * shared by all layers) of {@code [B t, 2 Hkv hd]} for the rank's block and three of {@code cp} times that.
 * One rank's thread.
 */
final class AllGatherAttention implements AttentionCore {
    private final Device device;
    private final Kernels k;
    private final Communicator group;
    private final int cp;
    private final int rank;
    private Tensor own;       // [B t, kvw] this rank's block, packed; the reduce-scattered gradient in the backward
    private Tensor gathered;  // [cp B t, kvw] rank order; the gradient in rank order in the backward
    private Tensor sequence;  // [B T, kvw] sequence order
    private Tensor dsequence; // [B T, kvw] the gradient in sequence order
    private int[] sized;

    AllGatherAttention(RankContext ctx) {
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.group = ctx.contextParallel().group();
        this.cp = group.size();
        this.rank = group.rank();
    }

    /** Elements of the buffers for micro-batches of {@code b} x {@code t} local rows (what {@link #prepare} allocates). */
    static long bufferElements(int cp, int b, int t, int kvHeads, int hd) {
        long block = (long) b * t * 2 * kvHeads * hd;
        return block + 3 * cp * block;
    }

    @Override
    public void prepare(int b, int t, int heads, int kvHeads, int hd) {
        int[] key = {b, t, kvHeads, hd};
        if (Arrays.equals(key, sized)) {
            return;
        }
        close();
        int n = Math.multiplyExact(b, t);
        int kvw = 2 * kvHeads * hd;
        own = f32(n, kvw);
        gathered = f32(Math.multiplyExact(cp, n), kvw);
        sequence = f32(cp * n, kvw);
        dsequence = f32(cp * n, kvw);
        sized = key;
    }

    private Tensor f32(int... shape) {
        return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
    }

    /** The whole sequence's keys and values, in sequence order, into {@link #sequence}. */
    private void gather(Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        int width = (heads + 2 * kvHeads) * hd;
        int kvw = 2 * kvHeads * hd;
        device.copy2d(own, 0, kvw, qkv, (long) heads * hd, width, (long) b * t, kvw);
        group.allGather(own, gathered);
        reorder(gathered, sequence, b, t, kvw, true);
    }

    /**
     * Between rank order ({@code [cp][B][t]}: rank j's chunks j and 2cp-1-j) and sequence order ({@code [B][T]}),
     * each chunk of each sequence one strided copy.
     */
    private void reorder(Tensor rankOrder, Tensor sequenceOrder, int b, int t, int kvw, boolean toSequence) {
        int c = t / 2;
        long seq = (long) cp * t;
        long chunkElems = (long) c * kvw;
        for (int j = 0; j < cp; j++) {
            for (int half = 0; half < 2; half++) {
                int chunk = half == 0 ? j : 2 * cp - 1 - j;
                long r = ((long) j * b * t + (long) half * c) * kvw;
                long s = (long) chunk * c * kvw;
                if (toSequence) {
                    device.copy2d(sequenceOrder, s, seq * kvw, rankOrder, r, (long) t * kvw, b, chunkElems);
                } else {
                    device.copy2d(rankOrder, r, (long) t * kvw, sequenceOrder, s, seq * kvw, b, chunkElems);
                }
            }
        }
    }

    /** The two blocks of this rank's query chunks against the sequence-ordered keys they see. */
    private AttentionBlock[] blocks(int b, int t, int heads, int kvHeads, int hd) {
        int c = t / 2;
        int seq = cp * t;
        int second = 2 * cp - 1 - rank;
        return new AttentionBlock[] {
            new AttentionBlock(b, heads, kvHeads, hd, t, 0, c, seq, 0, (rank + 1) * c, (long) rank * c),
            new AttentionBlock(b, heads, kvHeads, hd, t, c, c, seq, 0, (second + 1) * c, (long) second * c),
        };
    }

    @Override
    public void forward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        prepare(b, t, heads, kvHeads, hd);
        gather(qkv, b, t, heads, kvHeads, hd);
        int width = (heads + 2 * kvHeads) * hd;
        for (AttentionBlock blk : blocks(b, t, heads, kvHeads, hd)) {
            k.attentionBlockForward(out, lse, qkv, width, sequence, 2 * kvHeads * hd, blk);
        }
    }

    @Override
    public void backward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads,
                         int hd) {
        prepare(b, t, heads, kvHeads, hd);
        gather(qkv, b, t, heads, kvHeads, hd);
        int width = (heads + 2 * kvHeads) * hd;
        int kvw = 2 * kvHeads * hd;
        k.zero(dqkv);
        k.zero(dsequence);
        for (AttentionBlock blk : blocks(b, t, heads, kvHeads, hd)) {
            k.attentionBlockBackward(dqkv, width, dsequence, kvw, dout, out, lse, qkv, width, sequence, kvw, blk);
        }
        reorder(gathered, dsequence, b, t, kvw, false);
        group.reduceScatter(gathered, own, ReduceOp.SUM);
        device.copy2d(dqkv, (long) heads * hd, width, own, 0, kvw, (long) b * t, kvw);
    }

    @Override
    public void close() {
        for (Tensor x : new Tensor[] {own, gathered, sequence, dsequence}) {
            device.release(x);
        }
        own = null;
        gathered = null;
        sequence = null;
        dsequence = null;
        sized = null;
    }
}
