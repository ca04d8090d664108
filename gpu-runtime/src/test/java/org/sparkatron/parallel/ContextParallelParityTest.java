package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Recompute;

/**
 * Context parallelism trains exactly like one rank: for four AdamW steps with gradient clipping active, every
 * world rank's loss and gradient norm, and the gathered gradients and weights of every parameter its stage
 * holds, equal the single-rank run on the same global batches. Each sequence of 16 tokens is split over the
 * CP group in Megatron's load-balanced chunks; attention runs by ring ({@code p2p}) or by all-gather. Covered:
 * CP 2 and 4, both families (Llama with grouped-query attention, RoPE at the chunks' global positions; GPT-2 with
 * learned positions and a tied embedding), both modes, with TP 2 and sequence parallelism, with DP 2 (gradients
 * averaged over DP x CP, by the trainer's GradientSync or by the model's own data parallelism on the DP x CP group,
 * with and without the distributed optimizer sharding over it), with PP 2 (1F1B, four micro-batches), with dropout
 * (masks keyed by global rows), and recomputation, which must not change a bit.
 *
 * <p>Tolerances as {@link PipelineParityTest}: the runs differ only in fp32 summation order (attention's softmax
 * merged from per-block partial sums, query gradients accumulated block by block, the CP ranks' gradients
 * averaged instead of summed inside one GEMM), a few ulps; losses and norms 2e-6 relative at the first step and
 * 5e-5 later (AdamW turns rounding noise in near-zero gradients into weight steps of up to 1e-4), gradients
 * 2e-6 + 1e-3 relative, weights 1e-4 + 1e-3 relative.
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class ContextParallelParityTest {

    @ParameterizedTest(name = "{0} cp={1} {2} tp={3} dp={4} pp={5} sp={6}")
    @CsvSource({
        "gpt2, 2, p2p, 1, 1, 1, false",
        "llama, 2, p2p, 1, 1, 1, false",
        "gpt2, 4, p2p, 1, 1, 1, false",
        "llama, 4, p2p, 1, 1, 1, false",
        "gpt2, 2, all_gather, 1, 1, 1, false",
        "llama, 4, all_gather, 1, 1, 1, false",
        "llama, 2, p2p, 2, 1, 1, true",
        "gpt2, 2, all_gather, 2, 1, 1, true",
        "gpt2, 2, p2p, 1, 2, 1, false",
        "llama, 2, p2p, 1, 1, 2, false",
    })
    void trainsLikeOneRank(String family, int cp, String mode, int tp, int dp, int pp, boolean sp) throws Exception {
        check(ContextParallelRun.config(family, 2), ContextParallelRun.Setup.of(tp, cp, mode, dp, pp, sp), family);
    }

    /**
     * The model's own data parallelism over DP x CP (Megatron's {@code with_context_parallel}): bucketed all-reduce
     * overlapped with the backward, and the distributed optimizer sharding its state over the DP x CP ranks.
     */
    @ParameterizedTest(name = "{0} cp={1} dp={2} distributed optimizer {3}")
    @CsvSource({"llama, 2, 2, false", "gpt2, 2, 2, true", "llama, 4, 1, true"})
    void dataParallelInTheModelReducesOverDpTimesCp(String family, int cp, int dp, boolean distributedOptimizer)
            throws Exception {
        DataParallel.Config c = DataParallel.Config.defaults()
                .withDistributedOptimizer(distributedOptimizer).withBucketElements(4000);
        check(ContextParallelRun.config(family, 2), ContextParallelRun.Setup.of(1, cp, "p2p", dp, 1, false).inModel(c), family);
    }

    /**
     * FP8 (delayed scaling, Megatron's default recipe) under CP: the amaxes are reduced with the gradients, over
     * DP x CP (Megatron reduces them over TP x CP x DP), so every rank of the world ends with the same recipe state
     * (amax history and scales; a checkpoint saves one copy), and training tracks one rank in FP8. Not bitwise: a few-ulp fp32
     * difference (attention's block-wise sums) can move a value across an FP8 rounding boundary, one E4M3/E5M2 step
     * (6-25 %) for that element. Measured over 4 steps: losses within 2.7e-3 relative, gradient norms within 1.3e-2
     * (clipping active, AdamW amplifies near-zero gradients); asserted 1e-2 and 3e-2.
     */
    @ParameterizedTest(name = "llama fp8 cp={0} {1} dp={2}")
    @CsvSource({"2, p2p, 1", "2, all_gather, 2"})
    void fp8TracksOneRankInFp8(int cp, String mode, int dp) throws Exception {
        ModelConfig cfg = ContextParallelRun.config("llama", 2);
        ContextParallelRun.Setup s = ContextParallelRun.Setup.of(1, cp, mode, dp, 1, false).in(org.sparkatron.precision.Precision.FP8);
        List<PipelineRun.Step> ref = ContextParallelRun.reference(cfg, s);
        Map<Integer, String> states = new java.util.TreeMap<>();
        List<List<PipelineRun.Step>> runs = ContextParallelRun.parallel(cfg, s, states);
        assertEquals(s.world(), states.size(), "every rank has an FP8 recipe state");
        assertEquals(1, new HashSet<>(states.values()).size(), "every rank holds the same FP8 recipe state");
        for (int rank = 0; rank < runs.size(); rank++) {
            for (int step = 0; step < ContextParallelRun.STEPS; step++) {
                PipelineRun.Step want = ref.get(step);
                PipelineRun.Step got = runs.get(rank).get(step);
                String at = "fp8 " + s + " rank " + rank + " step " + (step + 1);
                assertEquals(want.loss(), got.loss(), 1e-2 * want.loss(), at + ": loss");
                assertEquals(want.gradNorm(), got.gradNorm(), 3e-2 * want.gradNorm(), at + ": gradient norm");
            }
        }
    }

    /** Dropout masks keyed by the chunks' global rows: the elements one rank drops, on every layout. */
    @ParameterizedTest(name = "{0} cp={1} {2} dp={3} dropout")
    @CsvSource({"gpt2, 2, p2p, 2", "llama, 4, all_gather, 1"})
    void dropoutDropsTheSameElementsAsOneRank(String family, int cp, String mode, int dp) throws Exception {
        check(ContextParallelRun.config(family, 2), ContextParallelRun.Setup.of(1, cp, mode, dp, 1, false).with(Recompute.NONE, 0.1f),
                family);
    }

    /** Selective and full recomputation run the ring again in the backward and give the same bits. */
    @ParameterizedTest(name = "{0} cp={1} {2}")
    @CsvSource({"llama, 2, p2p", "gpt2, 2, all_gather"})
    void recomputeChangesNoBit(String family, int cp, String mode) throws Exception {
        ModelConfig cfg = ContextParallelRun.config(family, 2);
        ContextParallelRun.Setup base = ContextParallelRun.Setup.of(1, cp, mode, 1, 1, false).with(Recompute.NONE, 0.1f);
        List<List<PipelineRun.Step>> none = ContextParallelRun.parallel(cfg, base);
        for (Recompute r : new Recompute[] {Recompute.SELECTIVE, Recompute.FULL}) {
            List<List<PipelineRun.Step>> again = ContextParallelRun.parallel(cfg, base.with(r, 0.1f));
            for (int rank = 0; rank < none.size(); rank++) {
                for (int s = 0; s < ContextParallelRun.STEPS; s++) {
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

    private static void check(ModelConfig cfg, ContextParallelRun.Setup s, String family) throws Exception {
        List<PipelineRun.Step> ref = ContextParallelRun.reference(cfg, s);
        List<List<PipelineRun.Step>> runs = ContextParallelRun.parallel(cfg, s);
        assertTrue(ref.get(0).gradNorm() > 0.05, "clipping is active (reference norm " + ref.get(0).gradNorm() + ")");
        Set<String> seen = new HashSet<>();
        for (int rank = 0; rank < runs.size(); rank++) {
            for (int step = 0; step < ContextParallelRun.STEPS; step++) {
                PipelineRun.Step want = ref.get(step);
                PipelineRun.Step got = runs.get(rank).get(step);
                String at = family + " " + s + " rank " + rank + " step " + (step + 1);
                double rel = step == 0 ? 2e-6 : 5e-5;
                assertEquals(want.loss(), got.loss(), rel * want.loss(), at + ": loss");
                assertEquals(want.gradNorm(), got.gradNorm(), rel * want.gradNorm(), at + ": gradient norm");
                boolean sharded = s.inModel() != null && s.inModel().distributedOptimizer();
                assertEquals(sharded, got.grads().isEmpty(), at + ": gradients compared unless the optimizer is distributed");
                for (Map.Entry<String, float[]> e : got.weights().entrySet()) {
                    seen.add(e.getKey());
                    if (!sharded) {
                        PipelineParityTest.close(at + ": gradient of " + e.getKey(), want.grads().get(e.getKey()),
                                got.grads().get(e.getKey()), 2e-6, 1e-3);
                    }
                    PipelineParityTest.close(at + ": weight " + e.getKey(), want.weights().get(e.getKey()), e.getValue(), 1e-4, 1e-3);
                }
            }
        }
        assertEquals(ref.get(0).grads().keySet(), seen, "every parameter is held by some stage");
    }
}
