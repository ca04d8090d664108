package org.sparkatron.precision;

import org.sparkatron.model.ModelLayout;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.device.Device;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.train.MarkovCorpus;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * FP8 training of tiny models on the demo task (a generated Markov language, as {@code demo-local}),
 * against the same run in bf16 from the same weights and batches.
 *
 * <p>Convergence parity: over 200 AdamW steps the FP8 loss curve tracks bf16's. E4M3 keeps 3 mantissa bits
 * (relative rounding error up to 2^-4 per operand, against bf16's 2^-8), so single steps differ; what must
 * hold is the curve. Bounds: the mean of the last 20 losses within 0.01 nats of bf16's (under 1% of the
 * final loss of ~1.1 nats, and a tenth of what bf16 still gains over its last 60 steps), every 20-step mean
 * within 0.02 nats, the curves not identical (FP8 is really on), and the run learning (final loss below
 * half the initial). Measured (2026-11-30): last-20 gaps 1.2e-4 .. 6.2e-4 nats, the largest 20-step gap
 * 2e-3. Recipes: Megatron's defaults (hybrid, delayed, history 1, most_recent) for both families, delayed
 * with a 16-pass max window and margin 1, tensorwise E4M3, and tensorwise with the first and last layers in
 * bf16 (Llama).
 *
 * <p>The 200-step runs take about a minute on two cores and run on the plain CPU device, and on a real GPU in
 * {@code ./sparkatron gpu-check} (too slow on the emulated CUDA, where {@code CudaFp8Test} runs the same parity on a
 * smaller model); the strict
 * device's host-access checks of the FP8 path run in {@link Fp8RecipeTest}, the refusal tests here and the
 * FP8 cases of {@code StepContractTest}.
 */
public class Fp8TrainingTest {
    static final int STEPS = 200;
    static final int BATCH = 8;
    static final int T = 32;

    public static ModelConfig tiny(String family) throws Exception {
        String json = family.equals("gpt2")
                ? "{\"model_type\":\"gpt2\",\"n_layer\":3,\"n_embd\":64,\"n_head\":4,\"n_positions\":32,\"vocab_size\":128}"
                : "{\"model_type\":\"llama\",\"num_hidden_layers\":3,\"hidden_size\":64,\"intermediate_size\":128,"
                        + "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":128,\"max_position_embeddings\":32}";
        return ModelConfig.fromJson(new ObjectMapper().readTree(json));
    }

    public static Fp8Recipe recipe(String spec) {
        Map<String, String> o = new java.util.HashMap<>();
        for (String kv : spec.split(" ")) {
            if (!kv.isBlank()) {
                String[] p = kv.split("=");
                o.put(p[0], p[1]);
            }
        }
        return Fp8Recipe.parse(o::get);
    }

    /** Losses of {@code steps} steps of the demo task. */
    static double[] train(ModelConfig cfg, Precision p, Fp8Recipe r, int steps) {
        Device d = TestDevices.create();
        Transformer m = new Transformer(cfg, new RankContext(d, TensorParallel.none(), p, r));
        m.initialize(3);
        MarkovCorpus lang = new MarkovCorpus(cfg.vocabSize(), 4, 1234);
        List<int[]> seqs = lang.generate(1000, T + 1, 1);
        Trainer tr = new Trainer(m, PackedSamples.perSequence(seqs, 0),
                Trainer.Options.defaults(BATCH, new LrSchedule(3e-3, 3e-4, 20, steps)));
        double[] losses = new double[steps];
        for (int s = 0; s < steps; s++) {
            losses[s] = tr.step().loss();
        }
        tr.close();
        m.close();
        d.close();
        return losses;
    }

    static double mean(double[] a, int from, int to) {
        double s = 0;
        for (int i = from; i < to; i++) {
            s += a[i];
        }
        return s / (to - from);
    }

    private static final Map<String, double[]> BF16 = new java.util.concurrent.ConcurrentHashMap<>();

    @ParameterizedTest(name = "{0}: {1}")
    @CsvSource({"gpt2, ''", "gpt2, fp8_amax_history_len=16 fp8_amax_compute_algo=max fp8_margin=1",
        "gpt2, fp8_format=e4m3 fp8_recipe=tensorwise", "llama, ''", "llama, fp8_recipe=tensorwise first_last_layers_bf16=true"})
    void fp8LossesTrackBf16Over200Steps(String family, String spec) throws Exception {
        assumeTrue(TestDevices.kind().equals("cpu") || Boolean.getBoolean("sparkatron.test.fp8.parity"),
                "200-step runs on the plain CPU device, and on a GPU (gpu-check sets sparkatron.test.fp8.parity)");
        ModelConfig cfg = tiny(family);
        double[] bf16 = BF16.computeIfAbsent(family, f -> train(cfg, Precision.BF16, null, STEPS));
        double[] fp8 = train(cfg, Precision.FP8, recipe(spec), STEPS);
        boolean differs = false;
        for (int i = 0; i < STEPS; i++) {
            differs |= fp8[i] != bf16[i];
        }
        assertTrue(differs, "fp8 and bf16 runs are identical: fp8 is not on");
        StringBuilder curve = new StringBuilder();
        double worst = 0;
        for (int w = 0; w < STEPS; w += 20) {
            double a = mean(fp8, w, w + 20);
            double b = mean(bf16, w, w + 20);
            worst = Math.max(worst, Math.abs(a - b));
            curve.append(String.format(Locale.ROOT, " %.3f/%.3f", a, b));
        }
        double endGap = Math.abs(mean(fp8, STEPS - 20, STEPS) - mean(bf16, STEPS - 20, STEPS));
        String what = family + " [" + spec + "] 20-step means fp8/bf16:" + curve + "; last-20 gap " + endGap;
        System.out.println("Fp8TrainingTest " + what);
        assertTrue(mean(fp8, STEPS - 20, STEPS) < fp8[0] / 2, "fp8 learns: " + what);
        assertTrue(endGap <= 0.01, what);
        assertTrue(worst <= 0.02, what);
    }

    @Test
    void fp8RefusesDimensionsThatAreNotMultiplesOf16() throws Exception {
        ModelConfig odd = ModelConfig.fromJson(new ObjectMapper().readTree("{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":40,"
                + "\"n_head\":4,\"n_positions\":32,\"vocab_size\":128}"));
        Device d = TestDevices.create();
        long before = d.systemAllocations();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> new Transformer(odd, RankContext.single(d, Precision.FP8)));
        assertEquals("precision fp8: attn.qkv is 40 -> 120 features on this rank; FP8 GEMMs need every dimension a multiple of 16"
                + " (choose hidden, head and MLP sizes accordingly, or keep the layer in bf16)", e.getMessage());
        assertEquals(before, d.systemAllocations(), "refused before allocating");
        Transformer m = new Transformer(tiny("gpt2"), RankContext.single(d, Precision.FP8));
        e = assertThrows(IllegalArgumentException.class, () -> m.prepare(3, 10));
        assertTrue(e.getMessage().startsWith("precision fp8: a micro-batch of 30 tokens (batch x sequence length) reaches layers.0.attn.qkv;"
                + " FP8 GEMMs need it to be a multiple of 16"), e.getMessage());
        Fp8Recipe allBf16 = recipe("first_last_layers_bf16=true num_layers_at_start_in_bf16=2");
        e = assertThrows(IllegalArgumentException.class,
                () -> new Transformer(tiny("llama"), new RankContext(d, TensorParallel.none(), Precision.FP8, allBf16)));
        assertEquals("first_last_layers_bf16 keeps 2 + 1 of the model's 3 layers in bf16: no layer is left in fp8", e.getMessage());
        m.close();
        d.close();
    }

    /**
     * A mixture-of-experts model under fp8 is refused with the reason before anything is allocated (the experts'
     * grouped GEMMs have no FP8 path), by the driver-side check and by the model; so is an FP8 block whose MLP is
     * experts when a first/last-layers split would leave only MoE layers in FP8.
     */
    @Test
    void fp8RefusesMixtureOfExpertsModels() throws Exception {
        ModelConfig moe = ModelConfig.fromJson(new ObjectMapper().readTree("{\"model_type\":\"mixtral\",\"num_hidden_layers\":2,"
                + "\"hidden_size\":32,\"intermediate_size\":32,\"num_attention_heads\":2,\"num_key_value_heads\":2,"
                + "\"vocab_size\":64,\"max_position_embeddings\":16,\"num_local_experts\":4,\"num_experts_per_tok\":2}"));
        String why = "precision fp8 with mixture-of-experts layers is not supported yet (the experts' GEMMs have no FP8 path);"
                + " use precision bf16";
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> ModelLayout.validateFp8(moe, 1, Fp8Recipe.defaults()));
        assertEquals(why, e.getMessage());
        Device d = TestDevices.create(); // every device: the CUDA device has MoE kernels, so precision is what refuses
        long before = d.systemAllocations();
        e = assertThrows(IllegalArgumentException.class, () -> new Transformer(moe, RankContext.single(d, Precision.FP8)));
        assertEquals(why, e.getMessage());
        assertEquals(before, d.systemAllocations(), "refused before allocating");
        Transformer bf16 = new Transformer(moe, RankContext.single(d, Precision.BF16)); // the same model trains in bf16
        bf16.close();
        d.close();
    }

    @Test
    void bf16LayersHoldNoFp8State() throws Exception {
        Device d = TestDevices.create();
        Transformer all = new Transformer(tiny("gpt2"), RankContext.single(d, Precision.FP8));
        Transformer firstLast = new Transformer(tiny("gpt2"), new RankContext(d, TensorParallel.none(), Precision.FP8,
                recipe("first_last_layers_bf16=true")));
        assertEquals(12, all.fp8().layers(), "3 blocks x 4 GEMMs");
        assertEquals(4, firstLast.fp8().layers(), "only the middle block");
        all.close();
        firstLast.close();
        d.close();
    }
}
