package org.sparkatron.parallel;

import org.sparkatron.device.Kernels;
import org.sparkatron.precision.Fp8Linear;
import org.sparkatron.tensor.Tensor;

/**
 * {@code Y = X A^T + b} with the input features split over the TP group (Megatron's
 * {@code RowParallelLinear}, input already parallel): rank r holds columns {@code [r I/tp, (r+1) I/tp)} of
 * {@code A [O, I]} and the matching columns of X, so its product is a partial sum of Y. The partial sums
 * are all-reduced ({@link Mappings.ReduceFromTensorRegion}) or, under sequence parallelism,
 * reduce-scattered into row blocks ({@link Mappings.ReduceScatterToSequenceRegion}); the bias is
 * replicated and added ONCE, after the reduction.
 *
 * <p>The backward gathers dY to all rows where SP split it, so the bias gradient (a sum over all rows) is
 * complete and identical on every rank: it needs no further reduction.
 *
 * <p>Keeps no per-call state (any number of micro-batches may be in flight). Threading and failure: one
 * rank's thread; forward and backward are TP collectives, ordered with the rank's kernels.
 */
public final class RowParallelLinear {
    private final TensorParallel tp;
    private final Kernels k;
    private final int inLocal;
    private final int out;
    private final Tensor w;
    private final Tensor b;
    private final Tensor dw;
    private final Tensor db;
    private final Workspace ws;
    private final Mapping outputMap;
    private Fp8Linear fp8; // null: the GEMMs run in the context's precision


    /** @param w this rank's weight columns [out, inLocal] (contiguous); {@code b}, {@code db} may be null. */
    public RowParallelLinear(RankContext ctx, int inLocal, int out, Tensor w, Tensor b, Tensor dw, Tensor db,
                             Workspace ws) {
        TensorParallel tp = ctx.tp();
        this.tp = tp;
        this.k = ctx.kernels();
        this.inLocal = inLocal;
        this.out = out;
        this.w = w;
        this.b = b;
        this.dw = dw;
        this.db = db;
        this.ws = ws;
        this.outputMap = tp.sequenceParallel() ? new Mappings.ReduceScatterToSequenceRegion(ctx)
                : new Mappings.ReduceFromTensorRegion(ctx);
    }

    /**
     * Runs this layer's GEMMs through FP8 operands ({@code precision: fp8}); the caller owns {@code f}. The
     * partial sums are reduced in bf16 as before, and the bias is added after the reduction. As for
     * {@link ColumnParallelLinear#useFp8}, a micro-batch's backward must follow its forward.
     */
    public void useFp8(Fp8Linear f) {
        if (f.in() != inLocal || f.out() != out) {
            throw new IllegalArgumentException("fp8 GEMM of " + f.in() + " -> " + f.out() + " for a layer of " + inLocal + " -> " + out);
        }
        this.fp8 = f;
    }

    /**
     * @param x [n, inLocal] this rank's input features (the caller keeps them for {@link #backward})
     * @param y [tp.localRows(n), out]
     */
    public void forward(Tensor x, int n, Tensor y) {
        int rows = tp.localRows(n);
        Tensor partial = tp.sequenceParallel() ? ws.get("tp.rows", n, out) : y;
        if (fp8 != null) {
            fp8.forward(partial, x, w, null, n);
        } else {
            k.linearForward(partial, x, w, null, n, inLocal, out);
        }
        outputMap.forward(partial, y);
        if (b != null) {
            k.addBias(y, b, rows, out);
        }
    }

    /**
     * Accumulates dA and db; overwrites {@code dx} [n, inLocal]. {@code dy} is [tp.localRows(n), out];
     * {@code x} is the forward's input.
     */
    public void backward(Tensor dy, Tensor dx, Tensor x, int n) {
        Tensor dyFull = tp.sequenceParallel() ? ws.get("tp.rows", n, out) : dy;
        outputMap.backward(dy, dyFull);
        if (fp8 != null) {
            fp8.backward(dx, false, dw, db, dyFull);
        } else {
            k.linearBackward(dx, false, dw, db, dyFull, x, w, n, inLocal, out);
        }
    }
}
