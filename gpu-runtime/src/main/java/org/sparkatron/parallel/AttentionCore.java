package org.sparkatron.parallel;

import org.sparkatron.device.Kernels;
import org.sparkatron.tensor.Tensor;

/**
 * The attention core of a rank's layers: causal softmax attention over a packed QKV tensor
 * {@code [B * t, (H + 2 Hkv) hd]} (after RoPE) into {@code out [B * t, H hd]} and each row's log-sum-exp
 * {@code lse [B, H, t]}, and its backward, which overwrites {@code dqkv} (Megatron's core attention,
 * {@code DotProductAttention}). {@code t} is the rows of each sequence this rank holds: the whole sequence
 * ({@link #local}), or under context parallelism the rank's two load-balanced chunks, whose keys and values
 * the other ranks of the CP group supply ({@link RingAttention}, {@link AllGatherAttention}).
 *
 * <p>One instance per rank, shared by all its layers (one layer runs at a time); buffers for a shape are
 * allocated by {@link #prepare} and reused. Every call issues kernels, device copies and CP-group
 * communication only (stream-ordered, no host access). One rank's thread; a failed CP peer makes a call throw
 * the communicator's exception.
 */
public interface AttentionCore extends AutoCloseable {
    /** Allocates the buffers micro-batches of {@code b} x {@code t} rows need (nothing when already sized). */
    void prepare(int b, int t, int heads, int kvHeads, int hd);

    void forward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd);

    /** {@code dqkv} is overwritten with the gradient of q, k and v; {@code out} and {@code lse} are the forward's. */
    void backward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd);

    /** Returns the buffers to the device. */
    @Override
    void close();

    /** The core a rank's context asks for: local attention, or ring / all-gather attention over its CP group. */
    static AttentionCore of(RankContext ctx) {
        ContextParallel cp = ctx.contextParallel();
        if (cp.size() == 1) {
            return local(ctx.kernels());
        }
        return cp.commType() == ContextParallel.CommType.P2P ? new RingAttention(ctx) : new AllGatherAttention(ctx);
    }

    /** Attention over the whole sequence on this rank: the device's attention kernels. No buffers. */
    static AttentionCore local(Kernels k) {
        return new AttentionCore() {
            @Override
            public void prepare(int b, int t, int heads, int kvHeads, int hd) {
            }

            @Override
            public void forward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
                k.attentionForward(out, lse, qkv, b, t, heads, kvHeads, hd);
            }

            @Override
            public void backward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads,
                                 int kvHeads, int hd) {
                k.attentionBackward(dqkv, dout, out, lse, qkv, b, t, heads, kvHeads, hd);
            }

            @Override
            public void close() {
            }
        };
    }

    /**
     * Elements of the buffers (activations kind) the core of a CP group of {@code cp} with {@code type} allocates
     * for micro-batches of {@code b} x {@code t} local rows: 0 for local attention.
     */
    static long bufferElements(ContextParallel.CommType type, int cp, int b, int t, int heads, int kvHeads, int hd) {
        if (cp == 1) {
            return 0;
        }
        return type == ContextParallel.CommType.P2P ? RingAttention.bufferElements(b, t, heads, kvHeads, hd)
                : AllGatherAttention.bufferElements(cp, b, t, kvHeads, hd);
    }

    /** The key/value columns of a packed QKV tensor with {@code heads} query heads: a view from the first key column. */
    static Tensor keysAndValues(Tensor qkv, int heads, int hd) {
        long off = (long) heads * hd;
        return qkv.slice(off, qkv.numel() - off);
    }
}
