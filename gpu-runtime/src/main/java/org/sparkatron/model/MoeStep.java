package org.sparkatron.model;

import org.sparkatron.tensor.Tensor;

/**
 * What the MoE layers of one rank need to know about the pass they run in, set by {@link Transformer} before
 * it runs a schedule: whether it trains (the load-balancing losses then add to the gradients and the
 * statistics), the gradient scale of a micro-batch ({@code gradScale}: 1/m, times the fp16 loss scale), the
 * weight of one micro-batch in the step's statistics, and the F64 device scalars they accumulate into:
 * {@link #AUX} (the auxiliary loss without its coefficient), {@link #Z} (the z-loss without its coefficient),
 * each averaged over the model's MoE layers, and {@link #DROPPED} (the fraction of token assignments dropped
 * by capacity). One rank's thread.
 */
final class MoeStep {
    static final int AUX = 0;
    static final int Z = 1;
    static final int DROPPED = 2;
    static final int STATS = 3;

    final Tensor stats;    // F64 [STATS] on the rank's device
    final int moeLayers;   // in the whole model (the statistics are means over them)
    boolean training;
    float gradScale;
    double weight;         // a micro-batch's weight in the step's figures

    MoeStep(Tensor stats, int moeLayers) {
        this.stats = stats;
        this.moeLayers = moeLayers;
    }

    void begin(boolean training, float gradScale, double weight) {
        this.training = training;
        this.gradScale = gradScale;
        this.weight = weight;
    }
}
