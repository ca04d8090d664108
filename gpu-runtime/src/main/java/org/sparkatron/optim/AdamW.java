package org.sparkatron.optim;

import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * AdamW over a whole {@link ParameterSet} in one pass, with PyTorch's {@code torch.optim.AdamW} semantics:
 * decoupled weight decay ({@code p *= 1 - lr * wd}, only on parameters marked for decay: matrices and
 * embeddings, not biases or norm weights), bias-corrected first and second moments, {@code eps} added
 * after the bias-corrected square root. State (m, v) is fp32 on the parameters' device, laid out like the
 * parameters. An update issues one kernel per parameter (the decay differs) and never waits for the
 * device. Not thread-safe; deterministic.
 */
public final class AdamW {
    private final ParameterSet params;
    private final Kernels kernels;
    private final float beta1;
    private final float beta2;
    private final float eps;
    private final float weightDecay;
    private final Tensor m;
    private final Tensor v;
    private final boolean[] decayOf;
    private long step;

    public AdamW(ParameterSet params, Kernels kernels, float beta1, float beta2, float eps, float weightDecay) {
        this.params = params;
        this.kernels = kernels;
        this.beta1 = beta1;
        this.beta2 = beta2;
        this.eps = eps;
        this.weightDecay = weightDecay;
        this.m = params.device().zeros(MemoryKind.OPTIMIZER, DType.F32, params.numel());
        this.v = params.device().zeros(MemoryKind.OPTIMIZER, DType.F32, params.numel());
        this.decayOf = new boolean[params.params().size()];
        for (int i = 0; i < decayOf.length; i++) {
            decayOf[i] = params.params().get(i).decay();
        }
    }

    /** Steps taken so far. */
    public long step() {
        return step;
    }

    public Tensor firstMoment() {
        return m;
    }

    public Tensor secondMoment() {
        return v;
    }

    /** Returns the moments to the device. */
    public void close() {
        params.device().release(m);
        params.device().release(v);
    }

    /** Restores the step counter (with moments restored through {@link #firstMoment()} / {@link #secondMoment()}). */
    public void setStep(long step) {
        this.step = step;
    }

    /** One update with learning rate {@code lr}; gradients are read as they are (clip them before). */
    public void update(float lr) {
        step++;
        double bc1 = 1 - Math.pow(beta1, step);
        double bc2 = 1 - Math.pow(beta2, step);
        float stepSize = (float) (lr / bc1);
        float invSqrtBc2 = (float) (1 / Math.sqrt(bc2));
        for (int pi = 0; pi < decayOf.length; pi++) {
            ParameterSet.Param par = params.params().get(pi);
            float decay = decayOf[pi] ? 1f - lr * weightDecay : 1f;
            kernels.adamw(params.weights(), params.grads(), m, v, par.offset(), par.numel(), beta1, beta2, eps, decay,
                    stepSize, invSqrtBc2);
        }
    }
}
