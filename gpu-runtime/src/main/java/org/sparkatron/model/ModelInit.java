package org.sparkatron.model;

import java.nio.FloatBuffer;
import java.util.List;
import java.util.SplittableRandom;
import org.sparkatron.tensor.Tensor;

/**
 * GPT-2-style initial values, deterministic in the seed: weights N(0, 0.02), the two residual output
 * projections N(0, 0.02 / sqrt(2 L)), biases 0 (the MoE routers' expert bias {@code moe.router.b} too, as Megatron starts
 * it), norm weights 1, padded vocabulary rows 0. Values are drawn
 * in layout order of the whole model, so every layout that keeps a part of them starts where one rank does.
 * Stateless.
 */
final class ModelInit {
    private ModelInit() {
    }

    /** Writes the initial values of {@code layout}'s parameters into the host block {@code w}, parameter by parameter. */
    static void initialize(ModelConfig cfg, List<ParameterSet.Param> layout, Tensor w, long seed) {
        SplittableRandom rng = new SplittableRandom(seed);
        double residualStd = 0.02 / Math.sqrt(2.0 * cfg.layers());
        for (ParameterSet.Param p : layout) {
            String n = p.name();
            boolean norm = n.contains("norm");
            boolean bias = n.endsWith(".b");
            double std = n.endsWith("attn.out.w") || n.endsWith("mlp.down.w") ? residualStd : 0.02;
            long rows = p.shape()[0];
            long rowLen = p.numel() / Math.max(1, rows);
            FloatBuffer out = w.slice(p.offset(), p.numel()).floats(); // one parameter fits a buffer
            for (int i = 0; i < p.numel(); i++) {
                float v;
                if (norm) {
                    v = bias ? 0f : 1f;
                } else if (bias) {
                    v = 0f;
                } else if ((n.equals("embed") || n.equals("head")) && i / rowLen >= cfg.vocabSize()) {
                    v = 0f;
                } else {
                    v = (float) (rng.nextGaussian() * std);
                }
                out.put(i, v);
            }
        }
    }
}
