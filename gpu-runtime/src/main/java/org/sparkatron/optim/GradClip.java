package org.sparkatron.optim;

import org.sparkatron.device.Kernels;
import org.sparkatron.tensor.Tensor;

/** Global gradient-norm clipping over one flat gradient block. */
public final class GradClip {
    private GradClip() {
    }

    /**
     * Scales the gradients so their global norm is at most {@code maxNorm}, as
     * {@code torch.nn.utils.clip_grad_norm_} does: coefficient {@code maxNorm / (norm + 1e-6)}, applied only
     * when below 1. A non-finite norm is returned as is and nothing is scaled (the caller decides).
     *
     * @param norm the global norm, computed (and, under model parallelism, reduced) by the caller
     * @return the coefficient applied (1 when not clipped)
     */
    public static float clip(Kernels kernels, Tensor grads, double norm, double maxNorm) {
        return clip(kernels, java.util.List.of(grads), norm, maxNorm);
    }

    /**
     * {@link #clip(Kernels, Tensor, double, double)} over several views (a distributed optimizer's gradient
     * shard, one range per bucket), with the one global norm.
     */
    public static float clip(Kernels kernels, java.util.List<Tensor> grads, double norm, double maxNorm) {
        float coef = coefficient(norm, maxNorm);
        if (coef != 1f) {
            for (Tensor g : grads) {
                kernels.scale(g, coef);
            }
        }
        return coef;
    }

    /**
     * The factor {@link #clip} would scale the gradients by: {@code maxNorm / (norm + 1e-6)} when below 1, else 1
     * (also for a non-finite norm or no clipping, {@code maxNorm <= 0}). For an optimizer that applies it as it
     * reads the gradients ({@link AdamW#update(float, float)}), saving the separate pass over them.
     */
    public static float coefficient(double norm, double maxNorm) {
        if (!(maxNorm > 0) || !Double.isFinite(norm)) {
            return 1f;
        }
        float coef = (float) (maxNorm / (norm + 1e-6));
        return coef >= 1f ? 1f : coef;
    }
}
