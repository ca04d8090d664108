package org.sparkatron.model;

import org.sparkatron.device.Kernels;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One pre-norm transformer block, llm.c style: it owns views of its parameters and gradients and the
 * activations its backward needs; {@link #forward} and {@link #backward} take the same arguments and the
 * backward runs the forward's steps in reverse.
 *
 * <pre>
 *   GPT-2:  x -> LayerNorm -> QKV(+b) -> causal attention -> out(+b) -> +x = r
 *           r -> LayerNorm -> fc(+b) -> GELU(tanh) -> proj(+b) -> +r = y
 *   Llama:  x -> RMSNorm -> QKV -> RoPE(q,k) -> causal GQA attention -> out -> +x = r
 *           r -> RMSNorm -> [gate|up] -> silu(gate)*up -> down -> +r = y
 * </pre>
 * Shapes: N = B*T rows, C hidden, H heads, Hkv kv-heads, hd head dim, F MLP hidden.
 */
final class TransformerBlock {
    private final ModelConfig cfg;
    private final Kernels k;
    private final ParameterSet ps;
    private final String p; // parameter name prefix "layers.{i}."
    private final Tensor ropeCos;
    private final Tensor ropeSin;

    // activations for the current (B, T), saved by forward for backward
    private int b;
    private int t;
    private Tensor input;     // [N, C]  not owned: the previous block's output
    private Tensor norm1;     // [N, C]
    private Tensor mean1;     // [N]     (LayerNorm only)
    private Tensor rstd1;     // [N]
    private Tensor qkv;       // [N, (H + 2 Hkv) hd], after RoPE
    private Tensor att;       // [N, H hd]
    private Tensor lse;       // [B, H, T]
    private Tensor attProj;   // [N, C]
    private Tensor resid;     // [N, C]  x + attention branch
    private Tensor norm2;     // [N, C]
    private Tensor mean2;     // [N]
    private Tensor rstd2;     // [N]
    private Tensor up;        // [N, F] (GPT-2) or [N, 2F] (Llama: gate | up)
    private Tensor act;       // [N, F]
    private Tensor down;      // [N, C]
    private Tensor output;    // [N, C]  resid + MLP branch

    TransformerBlock(ModelConfig cfg, Kernels k, ParameterSet ps, int index, Tensor ropeCos, Tensor ropeSin) {
        this.cfg = cfg;
        this.k = k;
        this.ps = ps;
        this.p = "layers." + index + ".";
        this.ropeCos = ropeCos;
        this.ropeSin = ropeSin;
    }

    /** Declares this block's parameters in layout order. */
    static void declare(ParameterSet.Builder bld, ModelConfig cfg, int index) {
        String p = "layers." + index + ".";
        int c = cfg.hidden();
        boolean bias = cfg.family().hasBiases();
        int upRows = cfg.family() == ModelConfig.Family.LLAMA ? 2 * cfg.ffnHidden() : cfg.ffnHidden();
        bld.add(p + "norm1.w", c);
        if (bias) {
            bld.add(p + "norm1.b", c);
        }
        bld.add(p + "attn.qkv.w", cfg.qkvWidth(), c);
        if (bias) {
            bld.add(p + "attn.qkv.b", cfg.qkvWidth());
        }
        bld.add(p + "attn.out.w", c, cfg.heads() * cfg.headDim());
        if (bias) {
            bld.add(p + "attn.out.b", c);
        }
        bld.add(p + "norm2.w", c);
        if (bias) {
            bld.add(p + "norm2.b", c);
        }
        bld.add(p + "mlp.up.w", upRows, c);
        if (bias) {
            bld.add(p + "mlp.up.b", upRows);
        }
        bld.add(p + "mlp.down.w", c, cfg.ffnHidden());
        if (bias) {
            bld.add(p + "mlp.down.b", c);
        }
    }

    /** (Re)allocates the activation buffers for a batch of b sequences of t tokens. */
    void allocate(int b, int t) {
        if (this.b == b && this.t == t) {
            return;
        }
        this.b = b;
        this.t = t;
        int n = b * t;
        int c = cfg.hidden();
        int f = cfg.ffnHidden();
        boolean llama = cfg.family() == ModelConfig.Family.LLAMA;
        norm1 = Tensor.allocateHost(DType.F32, n, c);
        mean1 = Tensor.allocateHost(DType.F32, n);
        rstd1 = Tensor.allocateHost(DType.F32, n);
        qkv = Tensor.allocateHost(DType.F32, n, cfg.qkvWidth());
        att = Tensor.allocateHost(DType.F32, n, cfg.heads() * cfg.headDim());
        lse = Tensor.allocateHost(DType.F32, b, cfg.heads(), t);
        attProj = Tensor.allocateHost(DType.F32, n, c);
        resid = Tensor.allocateHost(DType.F32, n, c);
        norm2 = Tensor.allocateHost(DType.F32, n, c);
        mean2 = Tensor.allocateHost(DType.F32, n);
        rstd2 = Tensor.allocateHost(DType.F32, n);
        up = Tensor.allocateHost(DType.F32, n, llama ? 2 * f : f);
        act = Tensor.allocateHost(DType.F32, n, f);
        down = Tensor.allocateHost(DType.F32, n, c);
        output = Tensor.allocateHost(DType.F32, n, c);
    }

    Tensor output() {
        return output;
    }

    /** x [N, C] -> output() [N, C]. */
    void forward(Tensor x) {
        int n = b * t;
        int c = cfg.hidden();
        int f = cfg.ffnHidden();
        int hd = cfg.headDim();
        input = x;
        norm(norm1, mean1, rstd1, x, "norm1");
        k.linearForward(qkv, norm1, w("attn.qkv.w"), w("attn.qkv.b"), n, c, cfg.qkvWidth());
        if (cfg.family().usesRope()) {
            k.rope(qkv, ropeCos, ropeSin, b, t, cfg.heads(), cfg.kvHeads(), hd, false);
        }
        k.attentionForward(att, lse, qkv, b, t, cfg.heads(), cfg.kvHeads(), hd);
        k.linearForward(attProj, att, w("attn.out.w"), w("attn.out.b"), n, cfg.heads() * hd, c);
        k.add(resid, x, attProj, (long) n * c);
        norm(norm2, mean2, rstd2, resid, "norm2");
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.linearForward(up, norm2, w("mlp.up.w"), null, n, c, 2 * f);
            k.swigluForward(act, up, n, f);
        } else {
            k.linearForward(up, norm2, w("mlp.up.w"), w("mlp.up.b"), n, c, f);
            k.geluForward(act, up, (long) n * f);
        }
        k.linearForward(down, act, w("mlp.down.w"), w("mlp.down.b"), n, f, c);
        k.add(output, resid, down, (long) n * c);
    }

    /**
     * In: {@code dresid} [N, C] holds dLoss/d(output). Out: it holds dLoss/d(input). Parameter gradients
     * are accumulated. {@code s} is the model's shared backward scratch.
     */
    void backward(Tensor dresid, BackwardScratch s) {
        int n = b * t;
        int c = cfg.hidden();
        int f = cfg.ffnHidden();
        int hd = cfg.headDim();
        // MLP branch: output = resid + down(act(up(norm2(resid))))
        k.linearBackward(s.act, false, g("mlp.down.w"), g("mlp.down.b"), dresid, act, w("mlp.down.w"), n, f, c);
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.swigluBackward(s.up, s.act, up, n, f);
            k.linearBackward(s.norm, false, g("mlp.up.w"), null, s.up, norm2, w("mlp.up.w"), n, c, 2 * f);
        } else {
            k.geluBackward(s.up, s.act, up, (long) n * f);
            k.linearBackward(s.norm, false, g("mlp.up.w"), g("mlp.up.b"), s.up, norm2, w("mlp.up.w"), n, c, f);
        }
        normBackward(dresid, s.norm, resid, mean2, rstd2, "norm2"); // dresid += d through norm2
        // attention branch: resid = input + out(attention(qkv(norm1(input))))
        k.linearBackward(s.att, false, g("attn.out.w"), g("attn.out.b"), dresid, att, w("attn.out.w"), n, cfg.heads() * hd, c);
        k.attentionBackward(s.qkv, s.att, att, lse, qkv, b, t, cfg.heads(), cfg.kvHeads(), hd);
        if (cfg.family().usesRope()) {
            k.rope(s.qkv, ropeCos, ropeSin, b, t, cfg.heads(), cfg.kvHeads(), hd, true);
        }
        k.linearBackward(s.norm, false, g("attn.qkv.w"), g("attn.qkv.b"), s.qkv, norm1, w("attn.qkv.w"), n, c, cfg.qkvWidth());
        normBackward(dresid, s.norm, input, mean1, rstd1, "norm1");
    }

    private void norm(Tensor out, Tensor mean, Tensor rstd, Tensor x, String name) {
        int n = b * t;
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormForward(out, rstd, x, w(name + ".w"), n, cfg.hidden(), cfg.normEps());
        } else {
            k.layerNormForward(out, mean, rstd, x, w(name + ".w"), w(name + ".b"), n, cfg.hidden(), cfg.normEps());
        }
    }

    private void normBackward(Tensor dx, Tensor dout, Tensor x, Tensor mean, Tensor rstd, String name) {
        int n = b * t;
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormBackward(dx, g(name + ".w"), dout, x, w(name + ".w"), rstd, n, cfg.hidden());
        } else {
            k.layerNormBackward(dx, g(name + ".w"), g(name + ".b"), dout, x, w(name + ".w"), mean, rstd, n, cfg.hidden());
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
        final Tensor norm;  // [N, C]
        final Tensor qkv;   // [N, (H + 2 Hkv) hd]
        final Tensor att;   // [N, H hd]
        final Tensor up;    // [N, F] or [N, 2F]
        final Tensor act;   // [N, F]

        BackwardScratch(ModelConfig cfg, int n) {
            boolean llama = cfg.family() == ModelConfig.Family.LLAMA;
            norm = Tensor.allocateHost(DType.F32, n, cfg.hidden());
            qkv = Tensor.allocateHost(DType.F32, n, cfg.qkvWidth());
            att = Tensor.allocateHost(DType.F32, n, cfg.heads() * cfg.headDim());
            up = Tensor.allocateHost(DType.F32, n, llama ? 2 * cfg.ffnHidden() : cfg.ffnHidden());
            act = Tensor.allocateHost(DType.F32, n, cfg.ffnHidden());
        }
    }
}
