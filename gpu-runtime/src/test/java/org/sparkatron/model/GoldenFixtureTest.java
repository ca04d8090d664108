package org.sparkatron.model;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.checkpoint.SafeTensorsFile;
import org.sparkatron.tensor.DType;

/**
 * Sanity checks of the committed golden fixtures themselves, independent of any model code: the parameter
 * shapes derived here from the HF config match the files, every parameter has a gradient, the stored loss
 * agrees with the stored logits and targets, and the AdamW trajectory is self-consistent.
 */
@Timeout(60)
class GoldenFixtureTest {

    /** Parameter name -> shape in HF layout, derived from the config alone (no gpt2 prefix). */
    static Map<String, int[]> paramShapes(JsonNode c) {
        Map<String, int[]> m = new LinkedHashMap<>();
        if (c.get("model_type").asText().equals("gpt2")) {
            int C = c.get("n_embd").asInt();
            m.put("wte.weight", new int[] {c.get("vocab_size").asInt(), C});
            m.put("wpe.weight", new int[] {c.get("n_positions").asInt(), C});
            for (int i = 0; i < c.get("n_layer").asInt(); i++) {
                String h = "h." + i + ".";
                m.put(h + "ln_1.weight", new int[] {C});
                m.put(h + "ln_1.bias", new int[] {C});
                m.put(h + "attn.c_attn.weight", new int[] {C, 3 * C}); // Conv1D: [in, out]
                m.put(h + "attn.c_attn.bias", new int[] {3 * C});
                m.put(h + "attn.c_proj.weight", new int[] {C, C});
                m.put(h + "attn.c_proj.bias", new int[] {C});
                m.put(h + "ln_2.weight", new int[] {C});
                m.put(h + "ln_2.bias", new int[] {C});
                m.put(h + "mlp.c_fc.weight", new int[] {C, 4 * C});
                m.put(h + "mlp.c_fc.bias", new int[] {4 * C});
                m.put(h + "mlp.c_proj.weight", new int[] {4 * C, C});
                m.put(h + "mlp.c_proj.bias", new int[] {C});
            }
            m.put("ln_f.weight", new int[] {C});
            m.put("ln_f.bias", new int[] {C});
        } else {
            int C = c.get("hidden_size").asInt();
            int V = c.get("vocab_size").asInt();
            int I = c.get("intermediate_size").asInt();
            int kv = c.get("num_key_value_heads").asInt() * (C / c.get("num_attention_heads").asInt());
            m.put("model.embed_tokens.weight", new int[] {V, C});
            for (int i = 0; i < c.get("num_hidden_layers").asInt(); i++) {
                String l = "model.layers." + i + ".";
                m.put(l + "input_layernorm.weight", new int[] {C});
                m.put(l + "self_attn.q_proj.weight", new int[] {C, C}); // nn.Linear: [out, in]
                m.put(l + "self_attn.k_proj.weight", new int[] {kv, C});
                m.put(l + "self_attn.v_proj.weight", new int[] {kv, C});
                m.put(l + "self_attn.o_proj.weight", new int[] {C, C});
                m.put(l + "post_attention_layernorm.weight", new int[] {C});
                m.put(l + "mlp.gate_proj.weight", new int[] {I, C});
                m.put(l + "mlp.up_proj.weight", new int[] {I, C});
                m.put(l + "mlp.down_proj.weight", new int[] {C, I});
            }
            m.put("model.norm.weight", new int[] {C});
            m.put("lm_head.weight", new int[] {V, C});
        }
        return m;
    }

    static int vocab(JsonNode c) {
        return c.get("vocab_size").asInt();
    }

    static int maxPositions(JsonNode c) {
        return c.has("n_positions") ? c.get("n_positions").asInt() : c.get("max_position_embeddings").asInt();
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void filesPresentAndWeightsMatchTheConfig(String family) throws IOException {
        try (GoldenFixture g = GoldenFixture.load(family)) {
            for (String f : List.of("config.json", "model.safetensors", "tokens.txt", "expected.safetensors",
                    "adamw.json", "final.safetensors")) {
                assertTrue(Files.isRegularFile(g.dir().resolve(f)), family + "/" + f);
            }
            assertEquals(family, g.config().get("model_type").asText());
            Map<String, int[]> shapes = paramShapes(g.config());
            SafeTensorsFile w = g.weights();
            Set<String> expectedStored = new HashSet<>();
            for (Map.Entry<String, int[]> e : shapes.entrySet()) {
                String stored = g.storedName(e.getKey());
                expectedStored.add(stored);
                assertTrue(w.contains(stored), "model.safetensors lacks " + stored);
                assertEquals(DType.F32, w.dtype(stored), stored);
                assertArrayEquals(e.getValue(), w.shape(stored), stored);
                assertArrayEquals(e.getValue(), g.finalWeights().shape(e.getKey()), "final " + e.getKey());
            }
            assertEquals(shapes.keySet(), g.finalWeights().names(), "final.safetensors holds exactly the parameters");
            Set<String> extra = new HashSet<>(w.names());
            extra.removeAll(expectedStored);
            if (family.equals("gpt2")) {
                // Old HF GPT-2 checkpoints carry [1,1,P,P] lower-triangular mask buffers a loader must skip.
                int layers = g.config().get("n_layer").asInt();
                int p = maxPositions(g.config());
                assertEquals(layers, extra.size(), "mask buffers " + extra);
                for (int i = 0; i < layers; i++) {
                    String n = "transformer.h." + i + ".attn.bias";
                    assertArrayEquals(new int[] {1, 1, p, p}, w.shape(n));
                    float[] mask = w.readF32(n);
                    for (int r = 0; r < p; r++) {
                        for (int col = 0; col < p; col++) {
                            assertEquals(col <= r ? 1f : 0f, mask[r * p + col], n + "[" + r + "," + col + "]");
                        }
                    }
                }
            } else {
                assertTrue(extra.isEmpty(), "unexpected tensors " + extra);
                assertFalse(g.config().get("tie_word_embeddings").asBoolean());
                assertTrue(g.config().get("num_key_value_heads").asInt() < g.config().get("num_attention_heads").asInt(),
                        "grouped-query attention is on");
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void tokensFitTheVocabularyAndPositions(String family) throws IOException {
        try (GoldenFixture g = GoldenFixture.load(family)) {
            assertEquals(2, g.batch());
            assertEquals(8, g.seqLen());
            assertTrue(g.seqLen() < maxPositions(g.config()));
            for (int[] row : g.tokens()) {
                assertEquals(g.seqLen() + 1, row.length);
                for (int t : row) {
                    assertTrue(t >= 0 && t < vocab(g.config()), "token " + t);
                }
            }
            assertEquals(g.tokens()[1][1], g.inputs()[g.seqLen() + 1]);
            assertEquals(g.tokens()[1][1], g.targets()[g.seqLen()]);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void lossAgreesWithLogitsAndEveryParameterHasAGradient(String family) throws IOException {
        try (GoldenFixture g = GoldenFixture.load(family)) {
            int b = g.batch();
            int t = g.seqLen();
            int v = vocab(g.config());
            assertArrayEquals(new int[] {b, t, v}, g.expectedShape("logits"));
            assertArrayEquals(new int[] {1}, g.expectedShape("loss"));
            // Recompute mean cross-entropy from the stored (F32-rounded) logits in double. Rounding each
            // logit to F32 moves it by at most ~|logit| * 6e-8 (logits here are O(10)), so the loss can
            // move by ~1e-6; 1e-5 leaves margin and still catches a wrong target or mean.
            float[] logits = g.logits();
            int[] targets = g.targets();
            double sum = 0;
            for (int i = 0; i < b * t; i++) {
                double max = Double.NEGATIVE_INFINITY;
                for (int j = 0; j < v; j++) {
                    max = Math.max(max, logits[i * v + j]);
                }
                double z = 0;
                for (int j = 0; j < v; j++) {
                    z += Math.exp(logits[i * v + j] - max);
                }
                sum += Math.log(z) + max - logits[i * v + targets[i]];
            }
            assertEquals(sum / (b * t), g.loss(), 1e-5);
            // Random init: the loss is of the order of ln(V) (uniform prediction), not 0 nor 10x more.
            double lnV = Math.log(v);
            assertTrue(g.loss() > 0.5 * lnV && g.loss() < 2 * lnV, "loss " + g.loss() + " vs ln V " + lnV);

            Map<String, int[]> shapes = paramShapes(g.config());
            assertEquals(shapes.keySet(), g.paramNames(), "one gradient per parameter, no more");
            double sq = 0;
            for (Map.Entry<String, int[]> e : shapes.entrySet()) {
                assertArrayEquals(e.getValue(), g.expectedShape("grad." + e.getKey()), e.getKey());
                float[] grad = g.grad(e.getKey());
                boolean nonzero = false;
                for (float x : grad) {
                    assertTrue(Float.isFinite(x), e.getKey());
                    nonzero |= x != 0;
                    sq += (double) x * x;
                }
                assertTrue(nonzero, "gradient of " + e.getKey() + " is all zero");
            }
            // The first recorded grad norm is the global L2 norm of these gradients (F32 rounding: ~1e-7 rel).
            assertEquals(g.adamw().gradNorms()[0], Math.sqrt(sq), 1e-5 * g.adamw().gradNorms()[0]);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void adamwTrajectoryIsSelfConsistent(String family) throws IOException {
        try (GoldenFixture g = GoldenFixture.load(family)) {
            GoldenFixture.AdamW a = g.adamw();
            assertEquals(5, a.steps());
            assertEquals(a.steps(), a.losses().length);
            assertEquals(a.steps(), a.gradNorms().length);
            assertEquals(g.loss(), a.losses()[0], 1e-6, "losses[0] is the expected loss");
            assertTrue(a.losses()[a.steps() - 1] < a.losses()[0] && a.finalLoss() < a.losses()[a.steps() - 1],
                    "training moves the loss down");
            boolean someClipped = false;
            boolean someNot = false;
            for (int i = 0; i < a.steps(); i++) {
                assertEquals(a.gradNorms()[i] > a.gradClip(), a.clipped()[i], "step " + i);
                someClipped |= a.clipped()[i];
                someNot |= !a.clipped()[i];
            }
            assertTrue(someClipped && someNot, "clipping engages on some steps but not all");
            List<String> oneD = new ArrayList<>();
            paramShapes(g.config()).forEach((n, s) -> {
                if (s.length == 1) {
                    oneD.add(n);
                }
            });
            assertEquals(oneD, a.noDecayParams());
            for (String n : g.paramNames()) {
                float[] before = g.weights().readF32(g.storedName(n));
                float[] after = g.finalWeights().readF32(n);
                assertNotEquals(0, maxAbsDiff(before, after), n + " moved");
            }
        }
    }

    private static double maxAbsDiff(float[] x, float[] y) {
        double m = 0;
        for (int i = 0; i < x.length; i++) {
            m = Math.max(m, Math.abs((double) x[i] - y[i]));
        }
        return m;
    }

    @Test
    void missingFixtureAndRaggedTokensGiveClearErrors(@TempDir Path dir) throws IOException {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> GoldenFixture.load("nope"));
        assertTrue(e.getMessage().contains("/golden/nope/config.json"), e.getMessage());
        Path f = dir.resolve("tokens.txt");
        Files.writeString(f, "1 2 3\n4 5\n");
        IOException r = assertThrows(IOException.class, () -> GoldenFixture.readTokens(f));
        assertTrue(r.getMessage().contains("line 2: 2 tokens, expected 3"), r.getMessage());
        Files.writeString(f, "1  2\n");
        IOException s = assertThrows(IOException.class, () -> GoldenFixture.readTokens(f));
        assertTrue(s.getMessage().contains("token 2 '' is not an integer"), s.getMessage());
    }
}
