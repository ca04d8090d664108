package org.sparkatron.parallel;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.precision.Fp8Linear;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * {@code Y = X A^T + b} with the output features split over the TP group (Megatron's
 * {@code ColumnParallelLinear}): rank r holds rows {@code [r O/tp, (r+1) O/tp)} of {@code A [O, I]} and
 * the same slice of {@code b}, and computes its slice of Y from the whole X.
 *
 * <p>Input region: without sequence parallelism X is replicated ({@link Mappings.CopyToTensorRegion}:
 * the backward all-reduces dX); with it X arrives as this rank's row block and is all-gathered
 * ({@link Mappings.GatherFromSequenceRegion}: the backward reduce-scatters dX) into a buffer the caller
 * owns (one per micro-batch in flight, or a recomputation's scratch), which the backward reads again.
 * With {@code gatherOutput} the output is all-gathered along the features
 * ({@link Mappings.GatherFromTensorRegion}), giving every rank the full Y.
 *
 * <p>The layer keeps no per-call state: {@link #forward} returns the input the GEMM used and
 * {@link #backward} takes it back, so any number of micro-batches may be in flight. Threading and
 * failure: one rank's thread; forward and backward are TP collectives, ordered with the rank's kernels.
 */
public final class ColumnParallelLinear {
    private final RankContext ctx;
    private final TensorParallel tp;
    private final Device device;
    private final Kernels k;
    private final int in;
    private final int outLocal;
    private final Tensor w;
    private final Tensor b;
    private final Tensor dw;
    private final Tensor db;
    private final boolean gatherOutput;
    private final Workspace ws;
    private final Mapping inputMap;
    private Tensor yLocal;  // [n, outLocal] (gatherOutput only): a transient of one call
    private Mapping outputMap;
    private Fp8Linear fp8; // null: the GEMMs run in the context's precision

    /**
     * @param w  this rank's weight rows [outLocal, in]; {@code b}, {@code db} may be null (no bias)
     * @param ws transient buffers shared with the other layers of the rank
     */
    public ColumnParallelLinear(RankContext ctx, int in, int outLocal, Tensor w, Tensor b, Tensor dw,
                                Tensor db, boolean gatherOutput, Workspace ws) {
        TensorParallel tp = ctx.tp();
        if (gatherOutput && tp.sequenceParallel()) {
            throw new IllegalArgumentException("a column-parallel layer cannot gather its output under sequence parallelism");
        }
        this.ctx = ctx;
        this.tp = tp;
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.in = in;
        this.outLocal = outLocal;
        this.w = w;
        this.b = b;
        this.dw = dw;
        this.db = db;
        this.gatherOutput = gatherOutput;
        this.ws = ws;
        this.inputMap = tp.sequenceParallel() ? new Mappings.GatherFromSequenceRegion(ctx) : new Mappings.CopyToTensorRegion(ctx);
    }

    public int outLocal() {
        return outLocal;
    }

    /**
     * Runs this layer's GEMMs through FP8 operands ({@code precision: fp8}); the caller owns {@code f} (its
     * buffers and their lifetime). The input mapping and the output gather are unchanged: under sequence
     * parallelism the bf16 input is gathered, then cast. {@code f} keeps the FP8 input of its last forward for
     * the backward, so one micro-batch's backward must follow its forward before the next forward (no
     * pipelining: Transformer refuses fp8 with pipeline parallelism).
     */
    public void useFp8(Fp8Linear f) {
        if (f.in() != in || f.out() != outLocal) {
            throw new IllegalArgumentException("fp8 GEMM of " + f.in() + " -> " + f.out() + " for a layer of " + in + " -> " + outLocal);
        }
        this.fp8 = f;
    }

    /** Whether {@link #forward} needs a gather buffer of {@code [n, in]} (sequence parallelism). */
    public boolean gathersInput() {
        return tp.sequenceParallel();
    }

    /**
     * @param x        [tp.localRows(n), in]: this rank's rows under SP, else all n rows
     * @param n        the token rows of the whole batch
     * @param out      [n, outLocal], or [n, outLocal * tp] with gatherOutput
     * @param gathered [n, in] under SP (the all-gathered input is written there), else null
     * @return the input the GEMM used: {@code gathered} under SP, else {@code x}; hand it to {@link #backward}
     */
    public Tensor forward(Tensor x, int n, Tensor out, Tensor gathered) {
        Tensor xFull = x; // CopyToTensorRegion's forward is the identity: no copy
        if (tp.sequenceParallel()) {
            inputMap.forward(x, gathered);
            xFull = gathered;
        }
        Tensor y = out;
        if (gatherOutput) {
            if (yLocal == null || yLocal.dim(0) != n) {
                device.release(yLocal);
                yLocal = device.allocate(MemoryKind.WORKSPACE, DType.F32, n, outLocal);
                if (outputMap != null) {
                    outputMap.close();
                }
                outputMap = new Mappings.GatherFromTensorRegion(ctx, n, outLocal);
            }
            y = yLocal;
        }
        if (fp8 != null) {
            fp8.forward(y, xFull, w, b, n);
        } else {
            k.linearForward(y, xFull, w, b, n, in, outLocal);
        }
        if (gatherOutput) {
            outputMap.forward(yLocal, out);
        }
        return xFull;
    }

    /**
     * Accumulates dA and db; overwrites {@code dx} ([tp.localRows(n), in]) with dLoss/dX, reduced over the group.
     *
     * @param dout  [n, outLocal], or [n, outLocal * tp] with gatherOutput
     * @param xFull what {@link #forward} returned for this micro-batch
     */
    public void backward(Tensor dout, Tensor dx, Tensor xFull, int n) {
        Tensor dy = dout;
        if (gatherOutput) {
            dy = ws.get("column.dy", n, outLocal);
            outputMap.backward(dout, dy);
        }
        Tensor dxFull = tp.sequenceParallel() ? ws.get("tp.rows", n, in) : dx;
        if (fp8 != null) {
            fp8.backward(dxFull, false, dw, db, dy);
        } else {
            k.linearBackward(dxFull, false, dw, db, dy, xFull, w, n, in, outLocal);
        }
        inputMap.backward(dxFull, dx);
    }

    /** Returns this layer's transient buffers to the device. */
    public void close() {
        device.release(yLocal);
        yLocal = null;
        if (outputMap != null) {
            outputMap.close();
            outputMap = null;
        }
    }
}
