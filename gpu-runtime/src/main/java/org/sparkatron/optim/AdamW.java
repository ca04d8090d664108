package org.sparkatron.optim;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * AdamW over a {@link ParameterSet} with PyTorch's {@code torch.optim.AdamW} semantics: decoupled weight decay
 * ({@code p *= 1 - lr * wd}, only on parameters marked for decay: matrices and embeddings, not biases or norm
 * weights), bias-corrected first and second moments, {@code eps} added after the bias-corrected square root.
 * State (m, v) is fp32 on the parameters' device.
 *
 * <p>What it updates is a list of {@link Piece}s, each a run of one parameter's elements with the place of
 * its state: the whole model ({@link #AdamW(ParameterSet, Kernels, float, float, float, float)}: one piece per
 * parameter, state laid out like the parameters), or a data-parallel rank's shard (the distributed
 * optimizer: pieces of the parameters inside the rank's ranges of the flat block, state packed in range
 * order). With {@code masterFormat} (the distributed optimizer under mixed precision) the optimizer also
 * keeps the fp32 master weights of its pieces, taken from the parameters' weight block at construction (and
 * at {@link #reloadMasterWeights}); an update steps the master and rounds it into the weight block.
 *
 * <p>An update issues one kernel per piece (the decay differs per parameter) and never waits for the device.
 * Not thread-safe; deterministic.
 */
public final class AdamW {
    /**
     * {@code length} elements of parameter {@code param} (its layout index) at {@code offset} in the flat
     * weight and gradient blocks, with their optimizer state at {@code stateOffset}.
     */
    public record Piece(int param, long offset, long stateOffset, long length) {
    }

    private final ParameterSet params;
    private final Kernels kernels;
    private final float beta1;
    private final float beta2;
    private final float eps;
    private final float weightDecay;
    private final List<Piece> pieces;
    private final long stateNumel;
    private final Tensor m;
    private final Tensor v;
    private final Tensor master;      // null: the weight block is the fp32 master
    private final DType masterFormat; // what the master is rounded to in the weight block
    private final boolean sharded;
    private long step;

    /** The whole model: state laid out like the parameter block. */
    public AdamW(ParameterSet params, Kernels kernels, float beta1, float beta2, float eps, float weightDecay) {
        this(params, kernels, beta1, beta2, eps, weightDecay, wholeBlock(params), params.numel(), null, false);
    }

    /**
     * The elements of {@code ranges} ({@code {start, length}} of the flat block, state packed in this order):
     * a data-parallel rank's shard.
     *
     * @param masterFormat null: update the weight block (fp32); BF16/F16: keep fp32 master weights for the
     *                     pieces and round them into the weight block after each update
     */
    public AdamW(ParameterSet params, Kernels kernels, float beta1, float beta2, float eps, float weightDecay,
                 List<long[]> ranges, DType masterFormat) {
        this(params, kernels, beta1, beta2, eps, weightDecay, pieces(params, ranges), total(ranges), masterFormat, true);
    }

    private AdamW(ParameterSet params, Kernels kernels, float beta1, float beta2, float eps, float weightDecay,
                  List<Piece> pieces, long stateNumel, DType masterFormat, boolean sharded) {
        this.sharded = sharded;
        this.params = params;
        this.kernels = kernels;
        this.beta1 = beta1;
        this.beta2 = beta2;
        this.eps = eps;
        this.weightDecay = weightDecay;
        this.pieces = Collections.unmodifiableList(pieces);
        this.stateNumel = stateNumel;
        this.m = params.device().zeros(MemoryKind.OPTIMIZER, DType.F32, stateNumel);
        this.v = params.device().zeros(MemoryKind.OPTIMIZER, DType.F32, stateNumel);
        this.masterFormat = masterFormat;
        this.master = masterFormat == null ? null : params.device().zeros(MemoryKind.OPTIMIZER, DType.F32, stateNumel);
        reloadMasterWeights();
    }

    private static List<Piece> wholeBlock(ParameterSet params) {
        List<Piece> out = new ArrayList<>();
        for (int i = 0; i < params.params().size(); i++) {
            ParameterSet.Param p = params.params().get(i);
            out.add(new Piece(i, p.offset(), p.offset(), p.numel()));
        }
        return out;
    }

    private static long total(List<long[]> ranges) {
        long n = 0;
        for (long[] r : ranges) {
            n += r[1];
        }
        return n;
    }

    /**
     * The pieces of {@code params} inside {@code ranges} of the flat block, in range order and, within a range,
     * in block order; state offsets count from 0 in that order (padding between parameters takes state space
     * but belongs to no piece).
     */
    public static List<Piece> pieces(ParameterSet params, List<long[]> ranges) {
        return piecesOf(params.params(), ranges);
    }

    /** {@link #pieces(ParameterSet, List)} of a layout's parameter list. */
    public static List<Piece> piecesOf(List<ParameterSet.Param> layout, List<long[]> ranges) {
        List<Integer> byOffset = new ArrayList<>();
        for (int i = 0; i < layout.size(); i++) {
            byOffset.add(i);
        }
        byOffset.sort((a, b) -> Long.compare(layout.get(a).offset(), layout.get(b).offset()));
        List<Piece> out = new ArrayList<>();
        long state = 0;
        for (long[] r : ranges) {
            long a = r[0];
            long b = r[0] + r[1];
            for (int i : byOffset) {
                ParameterSet.Param p = layout.get(i);
                long lo = Math.max(a, p.offset());
                long hi = Math.min(b, p.offset() + p.numel());
                if (lo < hi) {
                    out.add(new Piece(i, lo, state + (lo - a), hi - lo));
                }
            }
            state += r[1];
        }
        return out;
    }

    /** The device holding the parameters and this state. */
    public org.sparkatron.device.Device device() {
        return params.device();
    }

    /** Steps taken so far. */
    public long step() {
        return step;
    }

    /** What this optimizer updates, with where its state lives. */
    public List<Piece> pieces() {
        return pieces;
    }

    /** Elements of each state tensor (m, v, master). */
    public long stateNumel() {
        return stateNumel;
    }

    /** Whether the state covers a shard of the parameters (the distributed optimizer), not the whole block. */
    public boolean sharded() {
        return sharded;
    }

    public Tensor firstMoment() {
        return m;
    }

    public Tensor secondMoment() {
        return v;
    }

    /** The fp32 master weights of the pieces (state layout), or null when the weight block is the master. */
    public Tensor masterWeights() {
        return master;
    }

    /**
     * Takes the master weights from the weight block (fp32 elements, or 16-bit ones widened exactly), after the
     * model's weights were set from outside: an initialisation or a load without optimizer state (Megatron's
     * {@code reload_model_params}). Nothing to do
     * without a separate master. Stream-ordered device copies.
     */
    public void reloadMasterWeights() {
        if (master == null) {
            return;
        }
        Tensor block = params.weights(); // fp32 values, or 16-bit elements (widened exactly)
        for (Piece pc : pieces) {
            Tensor to = master.slice(pc.stateOffset(), pc.length());
            Tensor from = block.slice(pc.offset(), pc.length());
            if (block.dtype() == DType.F32) {
                params.device().copy(to, from);
            } else {
                kernels.widen(to, from, pc.length());
            }
        }
    }

    /** Writes the fp32 master weights into the weight block's pieces (their shard: all-gather them after). */
    public void writeMasterWeights() {
        if (master == null) {
            return;
        }
        if (params.weights().dtype() != DType.F32) {
            throw new IllegalStateException("the weight block holds " + params.weights().dtype() + " elements: call "
                    + "Transformer.finishParamGather() before writing the fp32 master weights into it");
        }
        for (Piece pc : pieces) {
            params.device().copy(params.weights().slice(pc.offset(), pc.length()), master.slice(pc.stateOffset(), pc.length()));
        }
    }

    /** Returns the state to the device. */
    public void close() {
        params.device().release(m);
        params.device().release(v);
        params.device().release(master);
    }

    /** Restores the step counter (with moments restored through {@link #firstMoment()} / {@link #secondMoment()}). */
    public void setStep(long step) {
        this.step = step;
    }

    /** One update with learning rate {@code lr}; gradients are read as they are (clip them before). */
    public void update(float lr) {
        update(lr, 1f);
    }

    /**
     * One update with learning rate {@code lr} on the gradients multiplied by {@code gradScale} (a clipping
     * coefficient, {@link GradClip#coefficient}): each piece's gradients are scaled in place as the update reads
     * them ({@link org.sparkatron.device.Kernels#adamwScaled}), so afterwards they hold the clipped values, as
     * after {@link GradClip#clip} and {@link #update(float)}.
     */
    public void update(float lr, float gradScale) {
        params.awaitReaders(); // an asynchronous checkpoint's copy of the weights and moments (Trainer waits earlier)
        step++;
        double bc1 = 1 - Math.pow(beta1, step);
        double bc2 = 1 - Math.pow(beta2, step);
        float stepSize = (float) (lr / bc1);
        float invSqrtBc2 = (float) (1 / Math.sqrt(bc2));
        Tensor grads = params.grads();
        for (Piece pc : pieces) {
            ParameterSet.Param par = params.params().get(pc.param());
            float decay = par.decay() ? 1f - lr * weightDecay : 1f;
            long n = pc.length();
            if (master == null && pc.offset() == pc.stateOffset()) { // whole-block layout: as before, one view each
                kernels.adamwScaled(params.weights(), grads, m, v, pc.offset(), n, gradScale, beta1, beta2, eps, decay,
                        stepSize, invSqrtBc2);
                continue;
            }
            Tensor w = master != null ? master.slice(pc.stateOffset(), n) : params.weights().slice(pc.offset(), n);
            kernels.adamwScaled(w, grads.slice(pc.offset(), n), m.slice(pc.stateOffset(), n), v.slice(pc.stateOffset(), n), 0,
                    n, gradScale, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
            if (master != null) {
                kernels.round(params.weights().slice(pc.offset(), n), w, n, masterFormat);
            }
        }
    }
}
