package org.sparkatron.model;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.ColumnParallelLinear;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.RowParallelLinear;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The dense MLP: {@code up -> GELU(tanh) -> down} (GPT-2, with biases) or {@code [gate|up] ->
 * silu(gate) * up -> down} (Llama). Up is column-parallel (for Llama rank r holds its slice of gate AND of
 * up), down row-parallel, as Megatron splits them. See {@link Mlp}.
 */
final class DenseMlp implements Mlp {
    private final ModelConfig cfg;
    private final Kernels k;
    private final int fl;
    private final ColumnParallelLinear upLayer;
    private final RowParallelLinear downLayer;

    /** What a micro-batch keeps: the all-gathered input (SP only), the up projection and the activation. */
    static final class Activations implements Kept {
        final Tensor gathered; // [N, C] (sequence parallelism only)
        final Tensor up;       // [N, Fl] (GPT-2) or [N, 2 Fl] (Llama: gate | up)
        final Tensor act;      // [N, Fl]
        private final Device device;

        Activations(Device device, BlockActivations.Shape s) {
            this.device = device;
            gathered = s.sp() ? device.allocate(MemoryKind.ACTIVATIONS, DType.F32, s.n(), s.c()) : null;
            up = device.allocate(MemoryKind.ACTIVATIONS, DType.F32, s.n(), s.upWidth());
            act = device.allocate(MemoryKind.ACTIVATIONS, DType.F32, s.n(), s.fl());
        }

        @Override
        public void release() {
            device.release(gathered);
            device.release(up);
            device.release(act);
        }
    }

    /** @param p the layer's parameter name prefix ("layers.{i}.") */
    DenseMlp(ModelConfig cfg, RankContext ctx, ParameterSet ps, String p, Workspace ws) {
        this.cfg = cfg;
        this.k = ctx.kernels();
        this.fl = cfg.ffnHidden() / ctx.tp().size();
        int up = cfg.family() == ModelConfig.Family.LLAMA ? 2 * fl : fl;
        upLayer = new ColumnParallelLinear(ctx, cfg.hidden(), up, w(ps, p + "mlp.up.w"), w(ps, p + "mlp.up.b"),
                g(ps, p + "mlp.up.w"), g(ps, p + "mlp.up.b"), false, ws);
        downLayer = new RowParallelLinear(ctx, fl, cfg.hidden(), w(ps, p + "mlp.down.w"), w(ps, p + "mlp.down.b"),
                g(ps, p + "mlp.down.w"), g(ps, p + "mlp.down.b"), ws);
    }

    /** Runs the up and down GEMMs through FP8 operands (precision fp8); the caller owns the layers' buffers. */
    void useFp8(org.sparkatron.precision.Fp8Linear up, org.sparkatron.precision.Fp8Linear down) {
        upLayer.useFp8(up);
        downLayer.useFp8(down);
    }

    private static Tensor w(ParameterSet ps, String name) {
        return ps.has(name) ? ps.weight(name) : null;
    }

    private static Tensor g(ParameterSet ps, String name) {
        return ps.has(name) ? ps.grad(name) : null;
    }

    /** Declares the MLP's parameters of layer prefix {@code p} (this rank's TP shards). */
    static void declare(ParameterSet.Builder bld, ModelConfig cfg, String p, int tpSize) {
        int c = cfg.hidden();
        boolean bias = cfg.family().hasBiases();
        int fl = cfg.ffnHidden() / tpSize;
        int upRows = cfg.family() == ModelConfig.Family.LLAMA ? 2 * fl : fl;
        bld.add(p + "mlp.up.w", TpRole.SPLIT, upRows, c);
        if (bias) {
            bld.add(p + "mlp.up.b", TpRole.SPLIT, upRows);
        }
        bld.add(p + "mlp.down.w", TpRole.SPLIT, c, fl);
        if (bias) {
            bld.add(p + "mlp.down.b", TpRole.REPLICATED, c);
        }
    }

    @Override
    public Kept kept(Device device, BlockActivations.Shape s, Recompute mode) {
        return mode == Recompute.FULL ? null : new Activations(device, s);
    }

    @Override
    public void forward(Kept work, Kept record, Tensor in, BlockActivations.Shape s, TransformerBlock.Scratch sc, Tensor out,
                        boolean recompute) {
        Activations a = (Activations) work;
        int n = s.n();
        upLayer.forward(in, n, a.up, a.gathered);
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.swigluForward(a.act, a.up, n, fl);
        } else {
            k.geluForward(a.act, a.up, (long) n * fl);
        }
        downLayer.forward(a.act, n, out);
    }

    @Override
    public void backward(Kept kept, Tensor in, Tensor dout, Tensor din, BlockActivations.Shape s, TransformerBlock.Scratch sc) {
        Activations a = (Activations) kept;
        int n = s.n();
        downLayer.backward(dout, sc.dact, a.act, n);
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.swigluBackward(sc.dup, sc.dact, a.up, n, fl);
        } else {
            k.geluBackward(sc.dup, sc.dact, a.up, (long) n * fl);
        }
        upLayer.backward(sc.dup, din, a.gathered != null ? a.gathered : in, n);
    }

    @Override
    public boolean isMoe() {
        return false;
    }

    @Override
    public void close() {
        upLayer.close();
    }
}
