package org.sparkatron.inference;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;

/**
 * Sampling against the distribution it must draw from (softmax of logits / temperature, cut by top-k and
 * top-p, renormalised, as Hugging Face's generate does), and generation's determinism and stopping.
 */
class GeneratorTest {
    static final float[] LOGITS = {2f, 1f, 0f, -1f, -3f};

    /** Draws N tokens and checks each frequency against {@code want} within 5 standard deviations. */
    static void assertDistribution(double[] want, Sampling s) {
        int n = 40_000;
        int[] counts = new int[LOGITS.length];
        SplittableRandom rng = new SplittableRandom(11);
        for (int i = 0; i < n; i++) {
            counts[Generator.next(LOGITS, 0, LOGITS.length, s, rng)]++;
        }
        for (int v = 0; v < want.length; v++) {
            double sd = Math.sqrt(want[v] * (1 - want[v]) / n);
            double got = counts[v] / (double) n;
            // 5 sd: a correct sampler fails this about once in 3 million runs per token; a wrong
            // temperature, cut or normalisation moves some frequency by far more
            assertEquals(want[v], got, 5 * sd + 1e-12, "token " + v + " under " + s);
        }
    }

    static double[] softmax(double temperature, int keep) {
        double[] p = new double[LOGITS.length];
        double sum = 0;
        for (int v = 0; v < keep; v++) {
            p[v] = Math.exp(LOGITS[v] / temperature);
            sum += p[v];
        }
        for (int v = 0; v < keep; v++) {
            p[v] /= sum;
        }
        return p;
    }

    @Test
    void greedyIsTheArgMax() {
        float[] l = {0.5f, 3f, -1f, 3f};
        assertEquals(1, Generator.next(l, 0, 4, Sampling.greedy(), new SplittableRandom(1)), "ties go to the lower id");
        float[] two = {9f, 0f, 0f, 1f, 5f, 2f};
        assertEquals(1, Generator.next(two, 3, 3, Sampling.greedy(), new SplittableRandom(1)), "reads its row only");
    }

    @Test
    void temperatureTopKAndTopP() {
        assertDistribution(softmax(1.0, 5), new Sampling(1.0, 0, 1.0));
        assertDistribution(softmax(0.5, 5), new Sampling(0.5, 0, 1.0));
        assertDistribution(softmax(2.0, 5), new Sampling(2.0, 0, 1.0));
        assertDistribution(softmax(1.0, 2), new Sampling(1.0, 2, 1.0));
        // probabilities at T=1: 0.6364, 0.2341, 0.0861, 0.0317, 0.0043: top-p 0.8 keeps the first two
        // (0.636 < 0.8 <= 0.870), top-p 0.9 the first three
        assertDistribution(softmax(1.0, 2), new Sampling(1.0, 0, 0.8));
        assertDistribution(softmax(1.0, 3), new Sampling(1.0, 0, 0.9));
        assertDistribution(softmax(1.0, 1), new Sampling(1.0, 0, 0.5));
        assertDistribution(softmax(1.0, 2), new Sampling(1.0, 3, 0.8));
    }

    @Test
    void badOptionsAreRefused() {
        assertThrows(IllegalArgumentException.class, () -> new Sampling(-1, 0, 1));
        assertThrows(IllegalArgumentException.class, () -> new Sampling(1, -2, 1));
        assertThrows(IllegalArgumentException.class, () -> new Sampling(1, 0, 0));
        assertThrows(IllegalArgumentException.class, () -> new Sampling(1, 0, 1.5));
    }

    static Transformer tinyModel() throws Exception {
        ModelConfig c = ModelConfig.fromJson(new ObjectMapper().readTree(
                "{\"model_type\":\"gpt2\",\"n_layer\":1,\"n_embd\":16,\"n_head\":2,\"n_positions\":8,\"vocab_size\":20}"));
        Transformer t = new Transformer(c, new CpuDevice());
        t.initialize(3);
        return t;
    }

    @Test
    void generationIsSeededSlidesItsWindowAndStops() throws Exception {
        Transformer m = tinyModel();
        int[] prompt = {1, 2, 3};
        Sampling hot = new Sampling(1.5, 0, 1.0);
        int[] a = Generator.generate(m, prompt, 20, hot, 42, -1);
        assertEquals(20, a.length, "20 tokens past an 8-position context: the window slides");
        assertArrayEquals(a, Generator.generate(m, prompt, 20, hot, 42, -1), "same seed, same tokens");
        boolean differs = false;
        for (long seed = 43; seed < 48 && !differs; seed++) {
            differs = !java.util.Arrays.equals(a, Generator.generate(m, prompt, 20, hot, seed, -1));
        }
        assertTrue(differs, "other seeds give other continuations at temperature 1.5");
        int[] greedy = Generator.generate(m, prompt, 6, Sampling.greedy(), 0, -1);
        int[] stopped = Generator.generate(m, prompt, 6, Sampling.greedy(), 0, greedy[2]);
        int firstStop = 0;
        while (greedy[firstStop] != greedy[2]) {
            firstStop++;
        }
        assertArrayEquals(java.util.Arrays.copyOf(greedy, firstStop), stopped, "stops before the stop token");
        assertThrows(IllegalArgumentException.class, () -> Generator.generate(m, new int[] {20}, 2, hot, 1, -1));
        assertThrows(IllegalArgumentException.class, () -> Generator.generate(m, new int[0], 2, hot, 1, -1));
    }
}
