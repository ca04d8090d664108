package org.sparkatron.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.model.GoldenModelTest.toDouble;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.LinkedHashMap;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.checkpoint.HfCheckpoint;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.optim.AdamW;
import org.sparkatron.optim.GradClip;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * A tiny Mixtral (4 experts, top-2, two MoE layers, GQA) against Hugging Face's own {@code MixtralForCausalLM}
 * in float64 ({@code make_moe_golden.py}, docs/golden.md), with Megatron's auxiliary load-balancing loss and
 * router z-loss added to the objective; and {@code mixtral-deepseek} ({@code make_moe_deepseek_golden.py}): HF's
 * Mixtral scaffold with a reference MoE written from Megatron's router: sigmoid scores, the aux-loss-free expert
 * bias (loaded, choosing, and moved after every step), top-k normalisation with a scaling factor, a shared
 * expert, a dense layer between the MoE layers ({@code moe_layer_freq [1, 0, 1]}), Megatron's names for all: the model loads from HF's safetensors names, and the logits, the
 * cross-entropy, both load-balancing losses, every parameter's gradient (routers and experts included) and
 * five AdamW steps agree. Tolerances as {@link GoldenModelTest} (fp32 against float64 from the same fp32
 * weights): the routing itself is exact, because the generator refuses draws within 1e-3 of a top-k tie.
 */
class GoldenMoeTest {
    private static int[] samples(GoldenFixture fx) {
        int[][] rows = fx.tokens();
        int[] s = new int[rows.length * rows[0].length];
        for (int i = 0; i < rows.length; i++) {
            System.arraycopy(rows[i], 0, s, i * rows[i].length, rows[i].length);
        }
        return s;
    }

    /** The model's last training pass's MoE statistics (aux, z, dropped fraction). */
    static double[] moeStats(Transformer model) {
        Device d = model.device();
        Tensor acc = d.allocate(MemoryKind.WORKSPACE, DType.F64, 3);
        model.moeStatistics(acc, 0);
        double[] out = TestDevices.readDoubles(d, acc);
        d.release(acc);
        return out;
    }

    @ParameterizedTest
    @ValueSource(strings = {"mixtral", "mixtral-deepseek"})
    void logitsLossesAndGradientsMatchTheReference(String fixture) throws Exception {
        try (GoldenFixture fx = GoldenFixture.load(fixture)) {
            Transformer model = ModelStore.load(fx.dir(), TestDevices.create());
            assertTrue(model.config().isMoe());
            assertEquals(fixture.equals("mixtral") ? 4 : 6, model.config().moe().experts());
            int b = fx.batch();
            int t = fx.seqLen();
            float[] logits = model.logits(samples(fx), b, t);
            assertClose("mixtral logits", toDouble(fx.logits()), toDouble(logits), 2e-5, 1e-5);

            model.params().zeroGrads();
            double loss = model.forwardBackward(samples(fx), b, t, 1f);
            assertEquals(fx.loss(), loss, 2e-5, "cross-entropy");
            double[] stats = moeStats(model);
            assertEquals(mean(fx.expected("aux")), stats[0], 1e-5, "auxiliary load-balancing loss, mean over layers");
            assertEquals(mean(fx.expected("z")), stats[1], 1e-5 * Math.abs(stats[1]), "router z-loss, mean over layers");
            assertEquals(0, stats[2], "dropless: nothing dropped");
            if (model.config().moe().expertBias()) { // the tokens per expert the bias update will read
                assertClose("tokens per expert of each MoE layer", toDouble(fx.expected("counts")),
                        TestDevices.readDoubles(model.device(), model.expertBiasTally()), 0, 0);
            }

            LinkedHashMap<String, Tensor> grads = HfCheckpoint.toHf(model.config(), model.params(), true);
            assertEquals(fx.paramNames(), grads.keySet(), "gradients of exactly HF's parameters");
            for (String name : fx.paramNames()) {
                assertClose("mixtral grad " + name, toDouble(fx.grad(name)), toDouble(grads.get(name)), 1e-5, 1e-3);
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"mixtral", "mixtral-deepseek"})
    void fiveAdamWStepsMatchTheReference(String fixture) throws Exception {
        try (GoldenFixture fx = GoldenFixture.load(fixture)) {
            Transformer model = ModelStore.load(fx.dir(), TestDevices.create());
            GoldenFixture.AdamW ref = fx.adamw();
            JsonNode raw = new ObjectMapper().readTree(fx.dir().resolve("adamw.json").toFile());
            AdamW adam = new AdamW(model.params(), model.kernels(), (float) ref.beta1(), (float) ref.beta2(), (float) ref.eps(),
                    (float) ref.weightDecay());
            int[] batch = samples(fx);
            for (int step = 0; step < ref.steps(); step++) {
                model.params().zeroGrads();
                double loss = model.forwardBackward(batch, fx.batch(), fx.seqLen(), 1f);
                assertEquals(ref.losses()[step], loss, 1e-4, "loss before step " + (step + 1));
                double[] stats = moeStats(model);
                assertEquals(raw.get("aux_losses").get(step).asDouble(), stats[0], 1e-4, "aux loss before step " + (step + 1));
                assertEquals(raw.get("z_losses").get(step).asDouble(), stats[1], 1e-4, "z-loss before step " + (step + 1));
                double norm = Math.sqrt(model.gradSquaredNorm());
                assertEquals(ref.gradNorms()[step], norm, 1e-4 * ref.gradNorms()[step], "grad norm at step " + (step + 1));
                float coef = GradClip.clip(model.kernels(), model.params().grads(), norm, ref.gradClip());
                assertEquals(ref.clipped()[step], coef < 1f, "clipping engaged at step " + (step + 1));
                adam.update((float) ref.lr());
                model.updateExpertBias(); // one rank: the tally is already the global count
            }
            assertEquals(ref.finalLoss(), model.loss(batch, fx.batch(), fx.seqLen(), null), 1e-4, "loss after the steps");
            LinkedHashMap<String, Tensor> weights = HfCheckpoint.toHf(model.config(), model.params(), false);
            for (String name : fx.paramNames()) {
                assertClose("weight after " + ref.steps() + " steps: " + name, toDouble(fx.finalWeights().readF32(name)),
                        toDouble(weights.get(name)), 1e-4, 1e-3);
            }
        }
    }

    private static double mean(float[] v) {
        double s = 0;
        for (float x : v) {
            s += x;
        }
        return s / v.length;
    }
}
