package org.sparkatron.model;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.ColumnParallelLinear;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.RowParallelLinear;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One pre-norm transformer block, llm.c style, on one tensor-parallel rank (TP = 1 is the same code with
 * identity mappings): it owns views of its parameters and gradients and the activations its backward
 * needs; {@link #forward} and {@link #backward} run the same steps in opposite order.
 *
 * <pre>
 *   GPT-2:  x -> LayerNorm -> QKV(+b) -> causal attention -> out(+b) -> dropout -> +x = r
 *           r -> LayerNorm -> fc(+b) -> GELU(tanh) -> proj(+b) -> dropout -> +r = y
 *   Llama:  x -> RMSNorm -> QKV -> RoPE(q,k) -> causal GQA attention -> out -> dropout -> +x = r
 *           r -> RMSNorm -> [gate|up] -> silu(gate)*up -> down -> dropout -> +r = y
 * </pre>
 * Megatron's split: QKV and fc / [gate|up] are column-parallel (each rank holds H/tp query heads and
 * Hkv/tp key/value heads, F/tp MLP columns, and for Llama its slice of gate AND its slice of up);
 * out and proj / down are row-parallel (bias added once, after the reduction). Norms, dropout and
 * residuals act on the residual stream: all N = B*T rows, or this rank's N/tp rows under sequence
 * parallelism. Shapes below: Nl residual rows, Hl = H/tp, Hkvl = Hkv/tp, Fl = F/tp, hd head dim.
 *
 * <p>Activations live on the rank's device, allocated per batch shape and reused every step; every step
 * of forward and backward is a kernel, a device copy or a TP collective (stream-ordered, no host access).
 */
final class TransformerBlock {
    private final ModelConfig cfg;
    private final Device device;
    private final Kernels k;
    private final ParameterSet ps;
    private final TensorParallel tp;
    private final String p; // parameter name prefix "layers.{i}."
    private final int index;
    private final Tensor ropeCos;
    private final Tensor ropeSin;
    private final int hl;
    private final int kvl;
    private final int fl;
    private final ColumnParallelLinear qkvLayer;
    private final RowParallelLinear outLayer;
    private final ColumnParallelLinear upLayer;
    private final RowParallelLinear downLayer;

    // activations for the current (B, T), saved by forward for backward
    private int b;
    private int t;
    private int nl;           // residual rows on this rank
    private Tensor input;     // [Nl, C]  not owned: the previous block's output
    private Tensor norm1;     // [Nl, C]
    private Tensor mean1;     // [Nl]     (LayerNorm only)
    private Tensor rstd1;     // [Nl]
    private Tensor qkv;       // [N, (Hl + 2 Hkvl) hd], after RoPE
    private Tensor att;       // [N, Hl hd]
    private Tensor lse;       // [B, Hl, T]
    private Tensor attProj;   // [Nl, C]
    private Tensor resid;     // [Nl, C]  x + attention branch
    private Tensor norm2;     // [Nl, C]
    private Tensor mean2;     // [Nl]
    private Tensor rstd2;     // [Nl]
    private Tensor up;        // [N, Fl] (GPT-2) or [N, 2 Fl] (Llama: gate | up)
    private Tensor act;       // [N, Fl]
    private Tensor down;      // [Nl, C]
    private Tensor output;    // [Nl, C]  resid + MLP branch
    private DropoutRng dropout;
    private long dropoutStep;
    private long dropoutRowOffset;

    TransformerBlock(ModelConfig cfg, RankContext ctx, ParameterSet ps, int index, Tensor ropeCos, Tensor ropeSin,
                     Workspace ws) {
        TensorParallel tp = ctx.tp();
        this.cfg = cfg;
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.ps = ps;
        this.tp = tp;
        this.index = index;
        this.p = "layers." + index + ".";
        this.ropeCos = ropeCos;
        this.ropeSin = ropeSin;
        this.hl = cfg.heads() / tp.size();
        this.kvl = cfg.kvHeads() / tp.size();
        this.fl = cfg.ffnHidden() / tp.size();
        int c = cfg.hidden();
        int hd = cfg.headDim();
        qkvLayer = new ColumnParallelLinear(ctx, c, (hl + 2 * kvl) * hd, w("attn.qkv.w"), w("attn.qkv.b"),
                g("attn.qkv.w"), g("attn.qkv.b"), false, ws);
        outLayer = new RowParallelLinear(ctx, hl * hd, c, w("attn.out.w"), w("attn.out.b"), g("attn.out.w"),
                g("attn.out.b"), ws);
        upLayer = new ColumnParallelLinear(ctx, c, upWidth(), w("mlp.up.w"), w("mlp.up.b"), g("mlp.up.w"),
                g("mlp.up.b"), false, ws);
        downLayer = new RowParallelLinear(ctx, fl, c, w("mlp.down.w"), w("mlp.down.b"), g("mlp.down.w"),
                g("mlp.down.b"), ws);
    }

    private int upWidth() {
        return cfg.family() == ModelConfig.Family.LLAMA ? 2 * fl : fl;
    }

    /** Declares this block's parameters (this rank's shards for a TP group of {@code tpSize}) in layout order. */
    static void declare(ParameterSet.Builder bld, ModelConfig cfg, int index, int tpSize) {
        String p = "layers." + index + ".";
        int c = cfg.hidden();
        int hd = cfg.headDim();
        boolean bias = cfg.family().hasBiases();
        int fl = cfg.ffnHidden() / tpSize;
        int upRows = cfg.family() == ModelConfig.Family.LLAMA ? 2 * fl : fl;
        int qkvRows = (cfg.heads() + 2 * cfg.kvHeads()) / tpSize * hd;
        bld.add(p + "norm1.w", TpRole.SEQUENCE, c);
        if (bias) {
            bld.add(p + "norm1.b", TpRole.SEQUENCE, c);
        }
        bld.add(p + "attn.qkv.w", TpRole.SPLIT, qkvRows, c);
        if (bias) {
            bld.add(p + "attn.qkv.b", TpRole.SPLIT, qkvRows);
        }
        bld.add(p + "attn.out.w", TpRole.SPLIT, c, cfg.heads() / tpSize * hd);
        if (bias) {
            bld.add(p + "attn.out.b", TpRole.REPLICATED, c);
        }
        bld.add(p + "norm2.w", TpRole.SEQUENCE, c);
        if (bias) {
            bld.add(p + "norm2.b", TpRole.SEQUENCE, c);
        }
        bld.add(p + "mlp.up.w", TpRole.SPLIT, upRows, c);
        if (bias) {
            bld.add(p + "mlp.up.b", TpRole.SPLIT, upRows);
        }
        bld.add(p + "mlp.down.w", TpRole.SPLIT, c, fl);
        if (bias) {
            bld.add(p + "mlp.down.b", TpRole.REPLICATED, c);
        }
    }

    /** (Re)allocates the activation buffers for a batch of b sequences of t tokens (the old ones go back). */
    void allocate(int b, int t) {
        if (this.b == b && this.t == t) {
            return;
        }
        release();
        this.b = b;
        this.t = t;
        int n = b * t;
        this.nl = tp.localRows(n);
        int c = cfg.hidden();
        int hd = cfg.headDim();
        norm1 = activation(nl, c);
        mean1 = activation(nl);
        rstd1 = activation(nl);
        qkv = activation(n, (hl + 2 * kvl) * hd);
        att = activation(n, hl * hd);
        lse = activation(b, hl, t);
        attProj = activation(nl, c);
        resid = activation(nl, c);
        norm2 = activation(nl, c);
        mean2 = activation(nl);
        rstd2 = activation(nl);
        up = activation(n, upWidth());
        act = activation(n, fl);
        down = activation(nl, c);
        output = activation(nl, c);
        qkvLayer.prepare(n);
        upLayer.prepare(n);
    }

    private Tensor activation(int... shape) {
        return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
    }

    /** Returns the activation buffers to the device. */
    void release() {
        if (b == 0) {
            return; // nothing allocated (or already released): releasing twice would hand a block out twice
        }
        for (Tensor x : new Tensor[] {norm1, mean1, rstd1, qkv, att, lse, attProj, resid, norm2, mean2, rstd2, up, act,
                down, output}) {
            device.release(x);
        }
        qkvLayer.close();
        upLayer.close();
        b = 0;
        t = 0;
    }

    Tensor output() {
        return output;
    }

    /**
     * x [Nl, C] -> output() [Nl, C]. {@code dropout} (null: none) drops elements of the two branch outputs
     * before the residual adds, with masks keyed by {@code step}, this layer and the global row (this
     * rank's first row plus {@code rowOffset}, the replica's first row in the global batch).
     */
    void forward(Tensor x, DropoutRng dropout, long step, long rowOffset) {
        int n = b * t;
        int c = cfg.hidden();
        int hd = cfg.headDim();
        this.dropout = dropout;
        this.dropoutStep = step;
        this.dropoutRowOffset = rowOffset;
        input = x;
        norm(norm1, mean1, rstd1, x, "norm1");
        qkvLayer.forward(norm1, n, qkv);
        if (cfg.family().usesRope()) {
            k.rope(qkv, ropeCos, ropeSin, b, t, hl, kvl, hd, false);
        }
        k.attentionForward(att, lse, qkv, b, t, hl, kvl, hd);
        outLayer.forward(att, n, attProj);
        drop(attProj, 0);
        k.add(resid, x, attProj, (long) nl * c);
        norm(norm2, mean2, rstd2, resid, "norm2");
        upLayer.forward(norm2, n, up);
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.swigluForward(act, up, n, fl);
        } else {
            k.geluForward(act, up, (long) n * fl);
        }
        downLayer.forward(act, n, down);
        drop(down, 1);
        k.add(output, resid, down, (long) nl * c);
    }

    private void drop(Tensor x, int site) {
        if (dropout != null) {
            dropout.apply(k, x, dropoutStep, 2 * index + site, dropoutRowOffset + tp.firstLocalRow(b * t), nl, cfg.hidden());
        }
    }

    /** The gradient reaching a dropped branch output: a copy of dresid through the mask (or dresid itself). */
    private Tensor dropBackward(Tensor dresid, BackwardScratch s, int site) {
        if (dropout == null) {
            return dresid;
        }
        device.copy(s.drop, dresid);
        drop(s.drop, site);
        return s.drop;
    }

    /**
     * In: {@code dresid} [Nl, C] holds dLoss/d(output). Out: it holds dLoss/d(input). Parameter gradients
     * are accumulated. {@code s} is the model's shared backward scratch.
     */
    void backward(Tensor dresid, BackwardScratch s) {
        int n = b * t;
        int hd = cfg.headDim();
        // MLP branch: output = resid + dropout(down(act(up(norm2(resid)))))
        downLayer.backward(dropBackward(dresid, s, 1), s.act);
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.swigluBackward(s.up, s.act, up, n, fl);
        } else {
            k.geluBackward(s.up, s.act, up, (long) n * fl);
        }
        upLayer.backward(s.up, s.norm);
        normBackward(dresid, s.norm, resid, mean2, rstd2, "norm2"); // dresid += d through norm2
        // attention branch: resid = input + dropout(out(attention(qkv(norm1(input)))))
        outLayer.backward(dropBackward(dresid, s, 0), s.att);
        k.attentionBackward(s.qkv, s.att, att, lse, qkv, b, t, hl, kvl, hd);
        if (cfg.family().usesRope()) {
            k.rope(s.qkv, ropeCos, ropeSin, b, t, hl, kvl, hd, true);
        }
        qkvLayer.backward(s.qkv, s.norm);
        normBackward(dresid, s.norm, input, mean1, rstd1, "norm1");
    }

    private void norm(Tensor out, Tensor mean, Tensor rstd, Tensor x, String name) {
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormForward(out, rstd, x, w(name + ".w"), nl, cfg.hidden(), cfg.normEps());
        } else {
            k.layerNormForward(out, mean, rstd, x, w(name + ".w"), w(name + ".b"), nl, cfg.hidden(), cfg.normEps());
        }
    }

    private void normBackward(Tensor dx, Tensor dout, Tensor x, Tensor mean, Tensor rstd, String name) {
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormBackward(dx, g(name + ".w"), dout, x, w(name + ".w"), rstd, nl, cfg.hidden());
        } else {
            k.layerNormBackward(dx, g(name + ".w"), g(name + ".b"), dout, x, w(name + ".w"), mean, rstd, nl, cfg.hidden());
        }
    }

    private Tensor w(String name) {
        String full = p + name;
        return ps.has(full) ? ps.weight(full) : null;
    }

    private Tensor g(String name) {
        String full = p + name;
        return ps.has(full) ? ps.grad(full) : null;
    }

    /** Backward scratch shared by all blocks of a model (only one block runs backward at a time). */
    static final class BackwardScratch {
        private final Device device;
        final Tensor norm;  // [Nl, C]
        final Tensor qkv;   // [N, (Hl + 2 Hkvl) hd]
        final Tensor att;   // [N, Hl hd]
        final Tensor up;    // [N, Fl] or [N, 2 Fl]
        final Tensor act;   // [N, Fl]
        final Tensor drop;  // [Nl, C] gradient through a dropout mask

        BackwardScratch(ModelConfig cfg, RankContext ctx, int n) {
            this.device = ctx.device();
            TensorParallel tp = ctx.tp();
            boolean llama = cfg.family() == ModelConfig.Family.LLAMA;
            int nl = tp.localRows(n);
            int hd = cfg.headDim();
            int fl = cfg.ffnHidden() / tp.size();
            norm = alloc(nl, cfg.hidden());
            qkv = alloc(n, (cfg.heads() + 2 * cfg.kvHeads()) / tp.size() * hd);
            att = alloc(n, cfg.heads() / tp.size() * hd);
            up = alloc(n, llama ? 2 * fl : fl);
            act = alloc(n, fl);
            drop = alloc(nl, cfg.hidden());
        }

        private Tensor alloc(int... shape) {
            return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
        }

        void release() {
            for (Tensor x : new Tensor[] {norm, qkv, att, up, act, drop}) {
                device.release(x);
            }
        }
    }
}
