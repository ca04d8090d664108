package org.sparkatron.model;

import java.util.ArrayList;
import java.util.List;
import org.sparkatron.device.MoeKernels;
import org.sparkatron.tensor.Tensor;

/**
 * What the MoE layers of one rank need to know about the pass they run in, set by {@link ModelPasses} before
 * it runs a schedule: whether it trains (the load-balancing losses then add to the gradients and the
 * statistics), the gradient scale of a micro-batch ({@code gradScale}: 1/m, times the fp16 loss scale), the
 * weight of one micro-batch in the step's statistics, and the F64 device scalars they accumulate into:
 * {@link #AUX} (the auxiliary loss without its coefficient), {@link #Z} (the z-loss without its coefficient),
 * each averaged over the model's MoE layers, and {@link #DROPPED} (the fraction of token assignments dropped
 * by capacity). With an aux-loss-free expert bias ({@link MoeConfig#expertBias()}) it also holds the step's
 * per-expert token counts of every MoE layer ({@code tally}), which the trainer sums over the data-parallel
 * replicas and turns into the bias update ({@link Transformer#updateExpertBias()}). One rank's thread.
 */
final class MoeStep {
    static final int AUX = 0;
    static final int Z = 1;
    static final int DROPPED = 2;
    static final int STATS = 3;

    final Tensor stats;    // F64 [STATS] on the rank's device
    final int moeLayers;   // in the whole model (the statistics are means over them)
    final ParameterSet master; // the fp32 master weights: the expert bias chooses from them, never a 16-bit copy
    final Tensor tally;    // F64 [moeLayers, E]: the training step's tokens per expert (expert bias), or null
    boolean training;
    float gradScale;
    double weight;         // a micro-batch's weight in the step's figures

    MoeStep(Tensor stats, int moeLayers, ParameterSet master, Tensor tally) {
        this.stats = stats;
        this.moeLayers = moeLayers;
        this.master = master;
        this.tally = tally;
    }

    /** Bytes of the tally a model allocates (0 without an expert bias). */
    static long tallyBytes(ModelConfig cfg) {
        return cfg.moe().expertBias() ? 8L * ModelLayout.moeLayers(cfg) * cfg.moe().experts() : 0;
    }

    /** Layer {@code index}'s place among the model's MoE layers (its row of the tally). */
    static int moeOrdinal(ModelConfig cfg, int index) {
        int n = 0;
        for (int i = 0; i < index; i++) {
            n += cfg.moe().isMoeLayer(i) ? 1 : 0;
        }
        return n;
    }

    /** Layer {@code index}'s row of the tally. */
    Tensor tallyOf(ModelConfig cfg, int index) {
        int e = cfg.moe().experts();
        return tally.slice((long) moeOrdinal(cfg, index) * e, e);
    }

    /** The MoE layers of {@code chunks} (this rank's), in order. */
    static List<Integer> heldLayers(ModelConfig cfg, List<ModelChunk> chunks) {
        List<Integer> layers = new ArrayList<>();
        for (ModelChunk c : chunks) {
            for (int i = c.layerStart(); i < c.layerStart() + c.layers(); i++) {
                if (cfg.moe().isMoeLayer(i)) {
                    layers.add(i);
                }
            }
        }
        return layers;
    }

    /** See {@link Transformer#updateExpertBias()}: the update of this rank's MoE layers (in {@code chunks}). */
    void updateExpertBias(ModelConfig cfg, List<ModelChunk> chunks, MoeKernels kernels) {
        if (tally == null) {
            return;
        }
        master.awaitReaders(); // the router biases are weights: an asynchronous checkpoint may still be copying them
        for (int i : heldLayers(cfg, chunks)) {
            kernels.expertBiasUpdate(master.weight("layers." + i + ".moe.router.b"), tallyOf(cfg, i), cfg.moe().experts(),
                    cfg.moe().biasUpdateRate());
        }
    }

    void begin(boolean training, float gradScale, double weight) {
        this.training = training;
        this.gradScale = gradScale;
        this.weight = weight;
    }
}
