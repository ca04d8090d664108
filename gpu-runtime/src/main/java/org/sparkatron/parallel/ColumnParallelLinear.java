package org.sparkatron.parallel;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
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
 * ({@link Mappings.GatherFromSequenceRegion}: the backward reduce-scatters dX). The gathered input is
 * kept for the backward. With {@code gatherOutput} the output is all-gathered along the features
 * ({@link Mappings.GatherFromTensorRegion}), giving every rank the full Y.
 *
 * <p>Threading and failure: one rank's thread; forward and backward are TP collectives.
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

    private int n;
    private Tensor xFull;   // [n, in]: the input every rank uses (own buffer under SP, else the caller's x)
    private Tensor gathered; // [n, in] own buffer (SP)
    private Tensor yLocal;  // [n, outLocal] (gatherOutput only)
    private Mapping outputMap;

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

    /** Allocates the buffers for batches of {@code n} token rows now (the first forward would otherwise). */
    public void prepare(int n) {
        if (tp.sequenceParallel() && (gathered == null || gathered.dim(0) != n)) {
            device.release(gathered);
            gathered = device.allocate(MemoryKind.ACTIVATIONS, DType.F32, n, in);
        }
    }

    /**
     * @param x   [tp.localRows(n), in]: this rank's rows under SP, else all n rows
     * @param n   the token rows of the whole batch
     * @param out [n, outLocal], or [n, outLocal * tp] with gatherOutput
     */
    public void forward(Tensor x, int n, Tensor out) {
        this.n = n;
        if (tp.sequenceParallel()) {
            prepare(n);
            inputMap.forward(x, gathered);
            xFull = gathered;
        } else {
            xFull = x; // CopyToTensorRegion's forward is the identity: no copy
        }
        Tensor y = out;
        if (gatherOutput) {
            if (yLocal == null || yLocal.dim(0) != n) {
                device.release(yLocal);
                yLocal = device.allocate(MemoryKind.ACTIVATIONS, DType.F32, n, outLocal);
                outputMap = new Mappings.GatherFromTensorRegion(ctx, n, outLocal);
            }
            y = yLocal;
        }
        k.linearForward(y, xFull, w, b, n, in, outLocal);
        if (gatherOutput) {
            outputMap.forward(yLocal, out);
        }
    }

    /** Returns this layer's own buffers (the gathered input under SP, the local output) to the device. */
    public void close() {
        device.release(gathered);
        device.release(yLocal);
        gathered = null;
        yLocal = null;
        if (outputMap != null) {
            outputMap.close();
        }
    }

    /**
     * Accumulates dA and db; overwrites {@code dx} ([tp.localRows(n), in]) with dLoss/dX, reduced over the group.
     *
     * @param dout [n, outLocal], or [n, outLocal * tp] with gatherOutput
     */
    public void backward(Tensor dout, Tensor dx) {
        Tensor dy = dout;
        if (gatherOutput) {
            dy = ws.get("column.dy", n, outLocal);
            outputMap.backward(dout, dy);
        }
        Tensor dxFull = tp.sequenceParallel() ? ws.get("tp.rows", n, in) : dx;
        k.linearBackward(dxFull, false, dw, db, dy, xFull, w, n, in, outLocal);
        inputMap.backward(dxFull, dx);
    }
}
