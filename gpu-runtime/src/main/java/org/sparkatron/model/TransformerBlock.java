package org.sparkatron.model;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.AttentionCore;
import org.sparkatron.parallel.ColumnParallelLinear;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.RowParallelLinear;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.precision.Fp8Linear;
import org.sparkatron.precision.Fp8State;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One pre-norm transformer block, llm.c style, on one tensor-parallel rank (TP = 1 is the same code with
 * identity mappings): it owns views of its parameters and gradients; {@link #forward} and
 * {@link #backward} run the same steps in opposite order.
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
 * <p>The block keeps no activations itself: {@link #forward} writes what the backward needs into a
 * micro-batch's {@link BlockActivations} (what exactly depends on the {@link Recompute} mode) and
 * {@link #backward} reads it back, recomputing what was not kept into the chunk's {@link Scratch}. So any
 * number of micro-batches may be in flight (pipeline schedules; under fp8 each keeps its FP8 GEMM inputs too), and every step of forward and backward is a
 * kernel, a device copy or a TP collective on the rank's device (stream-ordered, no host access).
 *
 * <p>The attention core (softmax attention of the RoPE'd q, k, v) is the rank's {@link AttentionCore}: local, or
 * under context parallelism ring or all-gather attention over the CP group, whose rows are two chunks of each
 * sequence; RoPE and the dropout masks then use the rows' global positions.
 */
final class TransformerBlock {
    private final ModelConfig cfg;
    private final Kernels k;
    private final ParameterSet ps;
    private final TensorParallel tp;
    private final ContextParallel cp;
    private final AttentionCore attention; // the rank's: local, or ring / all-gather over the CP group
    private final String p; // parameter name prefix "layers.{i}."
    private final int index;
    private final Tensor ropeCos;
    private final Tensor ropeSin;
    private final int hl;
    private final int kvl;
    private final ColumnParallelLinear qkvLayer;
    private final RowParallelLinear outLayer;
    private final Mlp mlp; // dense or mixture of experts
    private final Fp8Linear[] fp8; // qkv, out, up, down under precision fp8 (empty: bf16 GEMMs)

    /**
     * @param index     the layer's global index (its parameter names and dropout sites)
     * @param attention the rank's attention core (shared by its layers)
     * @param moe       the step settings MoE layers read (gradient scale, statistics)
     * @param fp8State  the model's FP8 state, or null
     * @param fp8Index  this block's position among the model's FP8 blocks (its GEMMs are FP8 layers
     *                  {@code 4 fp8Index .. 4 fp8Index + 3}), or -1 for bf16 GEMMs (FP8 needs a dense MLP)
     */
    TransformerBlock(ModelConfig cfg, RankContext ctx, ParameterSet ps, int index, Tensor ropeCos, Tensor ropeSin,
                     Workspace ws, AttentionCore attention, MoeStep moe, Fp8State fp8State, int fp8Index) {
        TensorParallel tp = ctx.tp();
        this.cfg = cfg;
        this.cp = ctx.contextParallel();
        this.attention = attention;
        this.k = ctx.kernels();
        this.ps = ps;
        this.tp = tp;
        this.index = index;
        this.p = "layers." + index + ".";
        this.ropeCos = ropeCos;
        this.ropeSin = ropeSin;
        this.hl = cfg.heads() / tp.size();
        this.kvl = cfg.kvHeads() / tp.size();
        int c = cfg.hidden();
        int hd = cfg.headDim();
        qkvLayer = new ColumnParallelLinear(ctx, c, (hl + 2 * kvl) * hd, w("attn.qkv.w"), w("attn.qkv.b"),
                g("attn.qkv.w"), g("attn.qkv.b"), false, ws);
        outLayer = new RowParallelLinear(ctx, hl * hd, c, w("attn.out.w"), w("attn.out.b"), g("attn.out.w"),
                g("attn.out.b"), ws);
        mlp = cfg.moe().isMoeLayer(index) ? new MoeMlp(cfg, ctx, ps, index, ws, moe) : new DenseMlp(cfg, ctx, ps, p, ws);
        if (fp8State != null && fp8Index >= 0) {
            if (!(mlp instanceof DenseMlp dense)) {
                throw new IllegalArgumentException("precision fp8: " + p + "mlp is a mixture of experts (no FP8 path)");
            }
            int fl = cfg.ffnHidden() / tp.size();
            int upWidth = cfg.family() == ModelConfig.Family.LLAMA ? 2 * fl : fl;
            int j = 4 * fp8Index;
            fp8 = new Fp8Linear[] {
                new Fp8Linear(ctx, fp8State, j, p + "attn.qkv", c, (hl + 2 * kvl) * hd),
                new Fp8Linear(ctx, fp8State, j + 1, p + "attn.out", hl * hd, c),
                new Fp8Linear(ctx, fp8State, j + 2, p + "mlp.up", c, upWidth),
                new Fp8Linear(ctx, fp8State, j + 3, p + "mlp.down", fl, c)};
            qkvLayer.useFp8(fp8[0]);
            outLayer.useFp8(fp8[1]);
            dense.useFp8(fp8[2], fp8[3]);
        } else {
            fp8 = new Fp8Linear[0];
        }
    }

    /** Refuses FP8 GEMMs whose per-rank feature counts are not multiples of 16, before anything is allocated. */
    static void validateFp8(ModelConfig cfg, int tpSize) {
        int c = cfg.hidden();
        int hd = cfg.headDim();
        int hl = cfg.heads() / tpSize;
        int kvl = cfg.kvHeads() / tpSize;
        int fl = cfg.ffnHidden() / tpSize;
        Fp8Linear.requireFeatures("attn.qkv", c, (hl + 2 * kvl) * hd);
        Fp8Linear.requireFeatures("attn.out", hl * hd, c);
        Fp8Linear.requireFeatures("mlp.up", c, cfg.family() == ModelConfig.Family.LLAMA ? 2 * fl : fl);
        Fp8Linear.requireFeatures("mlp.down", fl, c);
    }

    /** The block's MLP (dense or experts); micro-batches keep its activations. */
    Mlp mlp() {
        return mlp;
    }

    /**
     * What a micro-batch keeps of this block's FP8 GEMMs (their FP8 inputs, qkv / out / up / down) under
     * {@code mode}; null for bf16 GEMMs, and under full recomputation (the backward casts the inputs again).
     */
    Fp8Linear.Saved[] keptFp8(BlockActivations.Shape s, Recompute mode) {
        if (fp8.length == 0 || mode == Recompute.FULL) {
            return null;
        }
        Fp8Linear.Saved[] kept = new Fp8Linear.Saved[fp8.length];
        for (int i = 0; i < fp8.length; i++) {
            kept[i] = fp8[i].saved(s.n());
        }
        return kept;
    }

    /** Points the FP8 GEMMs at micro-batch {@code a}'s saved inputs (or their own buffers when it keeps none). */
    private void bindFp8(BlockActivations a) {
        for (int i = 0; i < fp8.length; i++) {
            fp8[i].bind(a.fp8 == null ? null : a.fp8[i]);
        }
    }

    /** Declares this block's parameters (this rank's shards for a TP group of {@code tpSize}) in layout order. */
    static void declare(ParameterSet.Builder bld, ModelConfig cfg, int index, int tpSize) {
        String p = "layers." + index + ".";
        int c = cfg.hidden();
        int hd = cfg.headDim();
        boolean bias = cfg.family().hasBiases();
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
        if (cfg.moe().isMoeLayer(index)) {
            MoeMlp.declare(bld, cfg, p, tpSize); // router and shared expert; the experts go to the expert region
        } else {
            DenseMlp.declare(bld, cfg, p, tpSize);
        }
    }

    /**
     * x [Nl, C] -> a.output [Nl, C], keeping in {@code a} what its mode keeps. Dropout (when {@code drop} has
     * a generator) drops elements of the two branch outputs before the residual adds.
     */
    void forward(BlockActivations a, Tensor x, BlockActivations.Shape s, Scratch sc, DropKey drop) {
        bindFp8(a);
        if (a.qkv == null) { // FULL: compute in the scratch layer, keep only the output
            forwardInto(sc.recompute, sc.recomputeMlp(mlp), a.mlp, false, a.output, x, s, sc, drop, sc.recompute.att,
                    sc.recompute.lse);
        } else {
            forwardInto(a, a.mlp, a.mlp, false, a.output, x, s, sc, drop, a.att != null ? a.att : sc.att,
                    a.lse != null ? a.lse : sc.lse);
        }
    }

    private void forwardInto(BlockActivations a, Mlp.Kept mlpWork, Mlp.Kept mlpRecord, boolean recompute, Tensor output,
                             Tensor x, BlockActivations.Shape s, Scratch sc, DropKey drop, Tensor att, Tensor lse) {
        int n = s.n();
        int hd = cfg.headDim();
        norm(a.norm1, a.mean1, a.rstd1, x, "norm1", s.nl());
        qkvLayer.forward(a.norm1, n, a.qkv, a.gathered1);
        if (cfg.family().usesRope()) {
            k.rope(a.qkv, ropeCos, ropeSin, sc.positions, s.b(), s.t(), hl, kvl, hd, false);
        }
        attention.forward(att, lse, a.qkv, s.b(), s.t(), hl, kvl, hd);
        outLayer.forward(att, n, sc.branch);
        drop(sc.branch, 0, s, drop);
        k.add(a.resid, x, sc.branch, (long) s.nl() * s.c());
        norm(a.norm2, a.mean2, a.rstd2, a.resid, "norm2", s.nl());
        mlp.forward(mlpWork, mlpRecord, a.norm2, s, sc, sc.branch, recompute);
        drop(sc.branch, 1, s, drop);
        k.add(output, a.resid, sc.branch, (long) s.nl() * s.c());
    }

    private void drop(Tensor x, int site, BlockActivations.Shape s, DropKey d) {
        if (d.rng() == null) {
            return;
        }
        if (cp.size() == 1) {
            d.rng().apply(k, x, d.step(), 2 * index + site, d.rowOffset() + tp.firstLocalRow(s.n()), s.nl(), s.c());
        } else { // this rank's rows are two chunks of each sequence: key the mask by their global rows
            int c = s.c();
            cp.forEachRun(tp.firstLocalRow(s.n()), s.nl(), s.seq(), (local, global, rows) -> d.rng().apply(k,
                    x.slice((long) local * c, (long) rows * c), d.step(), 2 * index + site, d.rowOffset() + global, rows, c));
        }
    }

    /** The gradient reaching a dropped branch output: a copy of dresid through the mask (or dresid itself). */
    private Tensor dropBackward(Tensor dresid, Scratch sc, int site, BlockActivations.Shape s, DropKey d) {
        if (d.rng() == null) {
            return dresid;
        }
        sc.device.copy(sc.drop, dresid);
        drop(sc.drop, site, s, d);
        return sc.drop;
    }

    /**
     * In: {@code dresid} [Nl, C] holds dLoss/d(output). Out: it holds dLoss/d(input). Parameter gradients
     * are accumulated. {@code x} is the block's input in the forward of this micro-batch; what {@code a}
     * did not keep is recomputed into {@code sc} first, with the forward's own dropout key, so bitwise the same.
     */
    void backward(BlockActivations a, Tensor x, Tensor dresid, BlockActivations.Shape s, Scratch sc, DropKey drop) {
        bindFp8(a);
        Tensor att = a.att;
        Tensor lse = a.lse;
        Mlp.Kept mlpKept = a.mlp;
        if (a.qkv == null) { // FULL: run the forward again into the scratch activations
            Mlp.Kept record = a.mlp;
            a = sc.recompute;
            att = a.att;
            lse = a.lse;
            mlpKept = sc.recomputeMlp(mlp);
            forwardInto(a, mlpKept, record, true, a.output, x, s, sc, drop, att, lse);
        } else if (att == null) { // SELECTIVE: the attention core again, from the kept q, k, v
            att = sc.att;
            lse = sc.lse;
            attention.forward(att, lse, a.qkv, s.b(), s.t(), hl, kvl, cfg.headDim());
        }
        int n = s.n();
        int hd = cfg.headDim();
        // MLP branch: output = resid + dropout(down(act(up(norm2(resid)))))
        mlp.backward(mlpKept, a.norm2, dropBackward(dresid, sc, 1, s, drop), sc.dnorm, s, sc);
        normBackward(dresid, sc.dnorm, a.resid, a.mean2, a.rstd2, "norm2", s.nl()); // dresid += d through norm2
        // attention branch: resid = input + dropout(out(attention(qkv(norm1(input)))))
        outLayer.backward(dropBackward(dresid, sc, 0, s, drop), sc.datt, att, n);
        attention.backward(sc.dqkv, sc.datt, att, lse, a.qkv, s.b(), s.t(), hl, kvl, hd);
        if (cfg.family().usesRope()) {
            k.rope(sc.dqkv, ropeCos, ropeSin, sc.positions, s.b(), s.t(), hl, kvl, hd, true);
        }
        qkvLayer.backward(sc.dqkv, sc.dnorm, a.gathered1 != null ? a.gathered1 : a.norm1, n);
        normBackward(dresid, sc.dnorm, x, a.mean1, a.rstd1, "norm1", s.nl());
    }

    private void norm(Tensor out, Tensor mean, Tensor rstd, Tensor x, String name, int nl) {
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormForward(out, rstd, x, w(name + ".w"), nl, cfg.hidden(), cfg.normEps());
        } else {
            k.layerNormForward(out, mean, rstd, x, w(name + ".w"), w(name + ".b"), nl, cfg.hidden(), cfg.normEps());
        }
    }

    private void normBackward(Tensor dx, Tensor dout, Tensor x, Tensor mean, Tensor rstd, String name, int nl) {
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

    void close() {
        qkvLayer.close();
        mlp.close();
        for (Fp8Linear f : fp8) {
            f.close();
        }
    }

    /** The dropout of one micro-batch: the generator (null: none), its step key and the replica's first row. */
    record DropKey(DropoutRng rng, long step, long rowOffset) {
        static final DropKey NONE = new DropKey(null, 0, 0);
    }

    /**
     * Buffers shared by all blocks of a chunk and all its micro-batches (one block runs at a time): the
     * forward's branch output before its residual add, the backward's gradients, and what recomputation
     * needs (the attention core under SELECTIVE, a whole layer's activations under FULL).
     */
    static final class Scratch {
        final Device device;
        final Tensor branch; // [Nl, C] attention or MLP branch output before the residual add
        final Tensor dnorm;  // [Nl, C]
        final Tensor dqkv;   // [N, (Hl + 2 Hkvl) hd]
        final Tensor datt;   // [N, Hl hd]
        final Tensor dup;    // [N, Fl] or [N, 2 Fl] (dense MLP layers)
        final Tensor dact;   // [N, Fl]
        final Tensor drop;   // [Nl, C] gradient through a dropout mask
        final Tensor att;    // [N, Hl hd] attention output (SELECTIVE; FULL uses recompute's)
        final Tensor lse;    // [B, Hl, T]
        final BlockActivations recompute; // one layer's activations without its MLP's (FULL)
        final Mlp.Kept recomputeDense;    // a dense MLP's activations (FULL, dense layers)
        final Mlp.Kept recomputeMoe;      // an MoE MLP's activations (FULL, MoE layers)
        final MoeMlp.Scratch moe;         // the MoE layers' shared buffers (models with experts)
        final Tensor positions; // I32 [T] global position of each of a sequence's local rows (context parallelism), or null

        /** @param positions the rank's position table (owned by the caller), null without context parallelism */
        Scratch(Device device, BlockActivations.Shape s, Recompute mode, Tensor positions) {
            this.device = device;
            this.positions = positions;
            branch = f32(s.nl(), s.c());
            dnorm = f32(s.nl(), s.c());
            dqkv = f32(s.n(), s.qkvWidth());
            datt = f32(s.n(), s.attWidth());
            dup = s.dense() ? f32(s.n(), s.upWidth()) : null;
            dact = s.dense() ? f32(s.n(), s.fl()) : null;
            drop = f32(s.nl(), s.c());
            boolean attentionAgain = mode == Recompute.SELECTIVE; // FULL recomputes into its own layer
            att = attentionAgain ? f32(s.n(), s.attWidth()) : null;
            lse = attentionAgain ? f32(s.b(), s.hl(), s.t()) : null;
            recompute = mode == Recompute.FULL ? new BlockActivations(device, s, Recompute.NONE, null) : null;
            recomputeDense = mode == Recompute.FULL && s.dense() ? new DenseMlp.Activations(device, s) : null;
            recomputeMoe = mode == Recompute.FULL && s.moe() != null ? new MoeMlp.Activations(device, s, true) : null;
            moe = s.moe() != null ? new MoeMlp.Scratch(device, s.moe()) : null;
        }

        /** The scratch activations a FULL recomputation of {@code mlp} computes into. */
        Mlp.Kept recomputeMlp(Mlp mlp) {
            return mlp.isMoe() ? recomputeMoe : recomputeDense;
        }

        private Tensor f32(int... shape) {
            return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
        }

        void release() {
            for (Tensor x : new Tensor[] {branch, dnorm, dqkv, datt, dup, dact, drop, att, lse}) {
                device.release(x);
            }
            if (recompute != null) {
                recompute.release();
            }
            for (Mlp.Kept x : new Mlp.Kept[] {recomputeDense, recomputeMoe, moe}) {
                if (x != null) {
                    x.release();
                }
            }
        }
    }
}
