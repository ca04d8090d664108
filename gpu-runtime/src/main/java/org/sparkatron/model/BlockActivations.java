package org.sparkatron.model;

import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * What one {@link TransformerBlock} keeps from the forward of one micro-batch for its backward, on the rank's
 * device. Which tensors exist depends on the {@link Recompute} mode: everything (NONE); everything but the
 * attention output and its log-sum-exp (SELECTIVE); only the block's output, which is the next block's input
 * (FULL). A null field is computed again, into the chunk's {@link BlockActivations recompute scratch}, by the
 * backward. Shapes: Nl residual rows, N = B T token rows, Hl/Hkvl/Fl this rank's heads and MLP width.
 *
 * <p>Owned by one micro-batch slot of a chunk; one rank's thread.
 */
final class BlockActivations {
    final Tensor norm1;    // [Nl, C]
    final Tensor mean1;    // [Nl]   (LayerNorm only)
    final Tensor rstd1;    // [Nl]
    final Tensor gathered1; // [N, C] the all-gathered QKV input (sequence parallelism only)
    final Tensor qkv;      // [N, (Hl + 2 Hkvl) hd], after RoPE
    final Tensor att;      // [N, Hl hd]
    final Tensor lse;      // [B, Hl, T] (T: this rank's rows of a sequence)
    final Tensor resid;    // [Nl, C] x + attention branch
    final Tensor norm2;    // [Nl, C]
    final Tensor mean2;    // [Nl]
    final Tensor rstd2;    // [Nl]
    final Mlp.Kept mlp;    // what the MLP keeps ({@link Mlp#kept}); may be null
    final Tensor output;   // [Nl, C] resid + MLP branch: the next block's input
    private final Device device;

    /** The buffers {@code mode} keeps for one micro-batch of the given shape, with {@code mlp}'s (null: none). */
    BlockActivations(Device device, Shape s, Recompute mode, Mlp layerMlp) {
        this.device = device;
        boolean keep = mode != Recompute.FULL;
        boolean keepAttention = mode == Recompute.NONE;
        norm1 = keep ? f32(s.nl, s.c) : null;
        mean1 = keep && s.layerNorm ? f32(s.nl) : null;
        rstd1 = keep ? f32(s.nl) : null;
        gathered1 = keep && s.sp ? f32(s.n, s.c) : null;
        qkv = keep ? f32(s.n, s.qkvWidth) : null;
        att = keepAttention ? f32(s.n, s.attWidth) : null;
        lse = keepAttention ? f32(s.b, s.hl, s.t) : null;
        resid = keep ? f32(s.nl, s.c) : null;
        norm2 = keep ? f32(s.nl, s.c) : null;
        mean2 = keep && s.layerNorm ? f32(s.nl) : null;
        rstd2 = keep ? f32(s.nl) : null;
        mlp = layerMlp == null ? null : layerMlp.kept(device, s, mode);
        output = f32(s.nl, s.c);
    }

    private Tensor f32(int... shape) {
        return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
    }

    void release() {
        for (Tensor x : new Tensor[] {norm1, mean1, rstd1, gathered1, qkv, att, lse, resid, norm2, mean2, rstd2, output}) {
            device.release(x);
        }
        if (mlp != null) {
            mlp.release();
        }
    }

    /**
     * The sizes of one micro-batch on one rank (TP shards, sequence-parallel rows, context-parallel chunks):
     * {@code seq} tokens per sequence, of which this rank holds {@code t} rows ({@code seq / cp}); {@code moe}
     * those of the MoE layers (null for a dense model), {@code dense} whether the model has dense MLP layers.
     */
    record Shape(int b, int t, int n, int nl, int c, int hl, int qkvWidth, int attWidth, int upWidth, int fl,
                 boolean sp, boolean layerNorm, MoeShape moe, boolean dense, int seq) {
        static Shape of(ModelConfig cfg, org.sparkatron.parallel.TensorParallel tp, int b, int t) {
            return of(cfg, tp, 1, org.sparkatron.parallel.ContextParallel.none(), b, t);
        }

        static Shape of(ModelConfig cfg, org.sparkatron.parallel.TensorParallel tp, int ep, int b, int t) {
            return of(cfg, tp, ep, org.sparkatron.parallel.ContextParallel.none(), b, t);
        }

        /** For sequences of {@code seq} tokens split over {@code cp} (refused when it does not split into 2 cp chunks). */
        static Shape of(ModelConfig cfg, org.sparkatron.parallel.TensorParallel tp, int ep,
                        org.sparkatron.parallel.ContextParallel cp, int b, int seq) {
            int t = cp.localLength(seq);
            int n = Math.multiplyExact(b, t);
            int hd = cfg.headDim();
            int hl = cfg.heads() / tp.size();
            int kvl = cfg.kvHeads() / tp.size();
            int fl = cfg.ffnHidden() / tp.size();
            boolean llama = cfg.family() == ModelConfig.Family.LLAMA;
            boolean dense = false;
            for (int i = 0; i < cfg.layers(); i++) {
                dense |= !cfg.moe().isMoeLayer(i);
            }
            return new Shape(b, t, n, tp.localRows(n), cfg.hidden(), hl, (hl + 2 * kvl) * hd, hl * hd, llama ? 2 * fl : fl, fl,
                    tp.sequenceParallel(), !llama, cfg.isMoe() ? MoeShape.of(cfg, tp.size(), ep, n) : null, dense, seq);
        }

        /** The head dimension. */
        int hd() {
            return attWidth / hl;
        }

        /** This rank's key/value heads. */
        int kvl() {
            return (qkvWidth - attWidth) / (2 * hd());
        }
    }
}
