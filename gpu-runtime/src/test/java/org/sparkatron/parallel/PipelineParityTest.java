package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Recompute;

/**
 * Pipeline parallelism trains exactly like one rank: for five AdamW steps of four micro-batches each, with
 * gradient clipping active, every world rank's loss and gradient norm, and the gathered gradients and weights
 * of every parameter its stage holds, equal the single-rank run on the same micro-batches. Covered: PP 2 and
 * 4 (1F1B), interleaved 1F1B with two chunks per stage, PP x TP x DP = 2 x 2 x 2 (eight ranks as threads),
 * sequence parallelism, uneven first/last stages, tied embeddings across stages (GPT-2; their two copies
 * must stay bitwise equal), both families, dropout, and every recompute mode, which must not change a bit.
 *
 * <p>Tolerances, as {@link TensorParallelParityTest}: the runs differ only in fp32 summation order (the
 * gradient norm sums per stage, TP sums partial products, DP averages two half-batches), a few ulps. At the
 * first step, from identical weights, losses and norms agree to 2e-6 relative. Later steps start from
 * weights that AdamW moved by up to 1e-4 where a gradient is rounding noise (lr 1e-2 times m / sqrt(v) of
 * noise, the weights' tolerance below), which moves the next losses and norms by a few 1e-5: 5e-5 relative
 * there. Gradients to 2e-6 + 1e-3 relative, weights after five steps to 1e-4 + 1e-3 relative.
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class PipelineParityTest {

    @ParameterizedTest(name = "{0} tp={1} pp={2} vpp={3} dp={4} sp={5}")
    @CsvSource({
        "gpt2, 1, 2, 1, 1, false",
        "llama, 1, 2, 1, 1, false",
        "gpt2, 1, 4, 1, 1, false",
        "llama, 1, 4, 1, 1, false",
        "gpt2, 1, 2, 2, 1, false",
        "llama, 1, 2, 2, 1, false",
        "gpt2, 2, 2, 1, 2, true",
        "llama, 2, 2, 1, 2, false",
        "llama, 2, 2, 2, 1, true",
    })
    void trainsLikeOneRank(String family, int tp, int pp, int vpp, int dp, boolean sp) throws Exception {
        check(ParityRun.config(family, 4), PipelineRun.Setup.of(tp, pp, vpp, dp, sp), family);
    }

    @ParameterizedTest(name = "{0} first={1} last={2}")
    @CsvSource({"gpt2, 1, 2", "llama, 2, 1", "llama, 1, -1"})
    void unevenFirstAndLastStagesTrainLikeOneRank(String family, int first, int last) throws Exception {
        check(ParityRun.config(family, 5), PipelineRun.Setup.of(1, 3, 1, 1, false).uneven(first, last), family);
    }

    /** Recomputation changes no bit: selective and full give the runs without recomputation exactly. */
    @ParameterizedTest(name = "{0} pp={1} sp={2}")
    @CsvSource({"gpt2, 2, false", "llama, 2, true"})
    void recomputeChangesNoBit(String family, int pp, boolean sp) throws Exception {
        ModelConfig cfg = ParityRun.config(family, 4);
        PipelineRun.Setup base = PipelineRun.Setup.of(sp ? 2 : 1, pp, 1, 1, sp).with(Recompute.NONE, 0.1f);
        List<List<PipelineRun.Step>> none = PipelineRun.parallel(cfg, base);
        for (Recompute r : new Recompute[] {Recompute.SELECTIVE, Recompute.FULL}) {
            List<List<PipelineRun.Step>> again = PipelineRun.parallel(cfg, base.with(r, 0.1f));
            for (int rank = 0; rank < none.size(); rank++) {
                for (int s = 0; s < ParityRun.STEPS; s++) {
                    PipelineRun.Step a = none.get(rank).get(s);
                    PipelineRun.Step b = again.get(rank).get(s);
                    String at = family + " " + r + " rank " + rank + " step " + (s + 1);
                    assertEquals(a.loss(), b.loss(), 0.0, at + ": loss");
                    for (String name : a.grads().keySet()) {
                        assertArrayEquals(a.grads().get(name), b.grads().get(name), at + ": gradient of " + name);
                        assertArrayEquals(a.weights().get(name), b.weights().get(name), at + ": weight " + name);
                    }
                }
            }
        }
    }

    private static void check(ModelConfig cfg, PipelineRun.Setup s, String family) throws Exception {
        List<PipelineRun.Step> ref = PipelineRun.reference(cfg, s);
        List<List<PipelineRun.Step>> runs = PipelineRun.parallel(cfg, s);
        assertTrue(ref.get(0).gradNorm() > 0.05, "clipping is active (reference norm " + ref.get(0).gradNorm() + ")");
        Set<String> seen = new HashSet<>();
        for (int rank = 0; rank < runs.size(); rank++) {
            for (int step = 0; step < ParityRun.STEPS; step++) {
                PipelineRun.Step want = ref.get(step);
                PipelineRun.Step got = runs.get(rank).get(step);
                String at = family + " " + s + " rank " + rank + " step " + (step + 1);
                double rel = step == 0 ? 2e-6 : 5e-5;
                assertEquals(want.loss(), got.loss(), rel * want.loss(), at + ": loss");
                assertEquals(want.gradNorm(), got.gradNorm(), rel * want.gradNorm(), at + ": gradient norm");
                for (Map.Entry<String, float[]> e : got.grads().entrySet()) {
                    seen.add(e.getKey());
                    close(at + ": gradient of " + e.getKey(), want.grads().get(e.getKey()), e.getValue(), 2e-6, 1e-3);
                    close(at + ": weight " + e.getKey(), want.weights().get(e.getKey()), got.weights().get(e.getKey()), 1e-4, 1e-3);
                }
            }
        }
        assertEquals(ref.get(0).grads().keySet(), seen, "every parameter is held by some stage");
        if (cfg.tiedEmbeddings() && s.pp() > 1) { // first and last stage of each pipeline: bitwise equal copies
            int world = runs.size();
            for (int rank = 0; rank < world; rank++) {
                int stage = rank / (s.tp() * s.dp());
                if (stage == s.pp() - 1) {
                    int firstStageRank = rank - stage * s.tp() * s.dp();
                    assertArrayEquals(runs.get(firstStageRank).get(ParityRun.STEPS - 1).weights().get("embed"),
                            runs.get(rank).get(ParityRun.STEPS - 1).weights().get("embed"),
                            "the tied embedding's copies on the first and last stage stay identical (rank " + rank + ")");
                }
            }
        }
    }

    static void close(String what, float[] want, float[] got, double abs, double rel) {
        assertEquals(want.length, got.length, what + ": length");
        for (int i = 0; i < want.length; i++) {
            if (!(Math.abs(want[i] - got[i]) <= abs + rel * Math.abs(want[i]))) {
                throw new AssertionError(what + " element " + i + ": expected " + want[i] + " got " + got[i]);
            }
        }
    }

    @Test
    void layoutsThatDoNotAddUpAreRefusedNamingTheNumbers() {
        assertMessage(() -> PipelineLayout.of(6, 4, 1, -1, -1), "6 layers are not divisible by pipeline size 4");
        assertMessage(() -> PipelineLayout.of(8, 2, 3, -1, -1), "not divisible by pipeline size 2 x virtual pipeline size 3 = 6");
        assertMessage(() -> PipelineLayout.of(3, 4, 1, -1, -1), "pipeline size 4 is larger than the 3 layers");
        assertMessage(() -> PipelineLayout.of(9, 4, 1, 2, 2), "leave 5 of the 9 layers for 2 other stage(s)");
        assertMessage(() -> PipelineLayout.of(8, 2, 2, 1, -1), "not supported with a virtual pipeline size > 1");
        assertMessage(() -> new org.sparkatron.parallel.pipeline.Interleaved(4, 2, 6), "micro-batches (6) to be a multiple of the pipeline size (4)");
        PipelineLayout ok = PipelineLayout.of(10, 4, 1, 1, 3);
        assertEquals("stage 0: [0, 1), stage 1: [1, 4), stage 2: [4, 7), stage 3: [7, 10)", ok.toString());
        PipelineLayout interleaved = PipelineLayout.of(8, 2, 2, -1, -1);
        assertEquals("stage 0: [0, 2) [4, 6), stage 1: [2, 4) [6, 8)", interleaved.toString());
    }

    private static void assertMessage(org.junit.jupiter.api.function.Executable e, String part) {
        try {
            e.execute();
        } catch (IllegalArgumentException ex) {
            assertTrue(ex.getMessage().contains(part), ex.getMessage());
            return;
        } catch (Throwable t) {
            throw new AssertionError("expected IllegalArgumentException containing '" + part + "', got " + t);
        }
        throw new AssertionError("expected a refusal containing '" + part + "'");
    }
}
