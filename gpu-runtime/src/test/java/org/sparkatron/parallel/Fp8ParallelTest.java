package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Fp8State;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.Trainer;

/**
 * FP8 delayed scaling under tensor and data parallelism: the amaxes are reduced (MAX) over the TP group and
 * the data-parallel replicas, as Megatron's amax reduction group does, so
 *
 * <ul>
 *   <li>every rank of a TP x DP layout holds bitwise the same scales after every step;</li>
 *   <li>the weights' scales after the first step equal a single rank's bitwise (the maximum over the shards
 *       of a split weight is the whole weight's amax; the weights are the same bf16 values in every layout);</li>
 *   <li>TP = 2 trains like one rank: each of 3 steps' losses within 1e-2 relative, the bound
 *       {@code MixedPrecisionTpTest} uses for bf16 (the FP8 operands are the same, so the layouts differ by the
 *       bf16 roundings and summation order that test accounts for, plus FP8 casts of inputs that differ by
 *       that much).</li>
 * </ul>
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class Fp8ParallelTest {
    static final int STEPS = 3;

    record Seen(double[] losses, float[][] scales) {
    }

    static List<Seen> run(ModelConfig cfg, int tp, int dp, boolean sp) throws Exception {
        return LocalRanks.run(tp * dp, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(tp * dp, tp, 1, 1, 1, 1), world)) {
                Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), sp),
                        Precision.FP8, org.sparkatron.precision.Fp8Recipe.parse(java.util.Map.of("fp8_amax_history_len", "4",
                                "fp8_amax_compute_algo", "max")::get)));
                m.initialize(ParityRun.SEED);
                int dpRank = pg.coords()[3];
                Trainer tr = new Trainer(m, ParityRun.source(cfg, dpRank, dp, 2), ParityRun.options(2), ParityRun.averaging(pg.dp()));
                double[] losses = new double[STEPS];
                float[][] scales = new float[STEPS][];
                for (int s = 0; s < STEPS; s++) {
                    losses[s] = tr.step().loss();
                    scales[s] = TestDevices.read(m.device(), m.fp8().scale());
                }
                return new Seen(losses, scales);
            }
        });
    }

    @ParameterizedTest
    @CsvSource({"gpt2, 2, 1, false", "gpt2, 2, 1, true", "gpt2, 2, 2, true", "llama, 1, 2, false"})
    void scalesAreReducedOverTensorAndDataParallelRanks(String family, int tp, int dp, boolean sp) throws Exception {
        ModelConfig cfg = ParityRun.config(family);
        List<Seen> ranks = run(cfg, tp, dp, sp);
        String what = family + " tp " + tp + " dp " + dp + " sp " + sp;
        for (int r = 1; r < ranks.size(); r++) {
            for (int s = 0; s < STEPS; s++) {
                assertArrayEquals(ranks.get(0).scales()[s], ranks.get(r).scales()[s], what + ": rank " + r + " scales, step " + (s + 1));
            }
        }
        if (dp == 1) {
            Seen one = run(cfg, 1, 1, false).get(0);
            Seen two = ranks.get(0);
            Transformer probe = new Transformer(cfg, RankContext.single(TestDevices.create(), Precision.FP8));
            Fp8State st = probe.fp8();
            List<Integer> weightSlots = new ArrayList<>();
            for (int j = 0; j < st.layers(); j++) {
                weightSlots.add(st.wSlot(j));
            }
            for (int slot : weightSlots) {
                assertEquals(one.scales()[0][slot], two.scales()[0][slot], what + ": weight scale in slot " + slot + " after step 1");
            }
            for (int s = 0; s < STEPS; s++) {
                assertEquals(one.losses()[s], two.losses()[s], 1e-2 * one.losses()[s], what + ": loss of step " + (s + 1));
            }
            probe.close();
        }
    }

    /** Each rank's losses, gradient norms and recipe state (saveState text) after each step of 4 micro-batches. */
    record Staged(double[] losses, double[] norms, String[] states) {
    }

    static List<Staged> pipelined(ModelConfig cfg, int pp, int vpp, org.sparkatron.model.Recompute mode, String recipe)
            throws Exception {
        return LocalRanks.run(pp, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(pp, 1, 1, 1, pp, vpp), world)) {
                PipelineParallel stage = pp == 1 ? null
                        : new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), pp, vpp, -1, -1), pg.embedding());
                Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), TensorParallel.none(), Precision.FP8,
                        stage, null, null, org.sparkatron.precision.Fp8TrainingTest.recipe(recipe)));
                m.initialize(ParityRun.SEED);
                m.setRecompute(mode);
                Trainer tr = new Trainer(m, ParityRun.source(cfg, 0, 1, 2), PipelineRun.options(2, 4),
                        org.sparkatron.train.GradientSync.NONE);
                Staged out = new Staged(new double[STEPS], new double[STEPS], new String[STEPS]);
                for (int s = 0; s < STEPS; s++) {
                    Trainer.StepMetrics sm = tr.step();
                    out.losses()[s] = sm.loss();
                    out.norms()[s] = sm.gradNorm();
                    out.states()[s] = m.fp8().saveState();
                }
                tr.close();
                m.close();
                return out;
            }
        });
    }

    /**
     * Pipeline parallelism under fp8 (Megatron/Transformer Engine: each stage runs its own layers' FP8 GEMMs, the
     * amaxes reduced over TP and DP): 2 and 4 stages, interleaved, every recompute mode, delayed and tensorwise
     * scaling, against one rank with the same 4 micro-batches per step. A schedule runs several forwards before
     * their backwards, so each micro-batch keeps its own FP8 inputs (and, tensorwise, their scales); every stage
     * holds the whole model's delayed-scaling state (the MAX over the stages fills in the others' layers), bitwise
     * the same on every stage after every step. The stages run each micro-batch through the same kernels on the same values
     * as the single rank, in the same gradient accumulation order, so the first step's loss and (delayed) recipe
     * state are bitwise the single rank's; its gradient norm sums the stages' partial norms in another fp32 order (within
     * 1e-6). That moves the clipped update by an ulp here and there, and the next casts can put such a value on the
     * neighbouring FP8 code (2^-4 apart for E4M3), so later steps are held to CudaFp8Test's bounds for two
     * summation orders: losses within 1e-3 and gradient norms within 2e-2 relative (measured: losses bitwise equal in
     * all three steps, gradient norms within 9e-8). Keeping one FP8 input per layer (why pipelining was refused
     * before) fails the first step's gradient norm, by 1e-2; so does not restoring a micro-batch's tensorwise input
     * scale before its backward.
     */
    @ParameterizedTest(name = "{0} pp {1} vpp {2} {3} [{4}]")
    @CsvSource({"gpt2, 2, 1, NONE, fp8_amax_history_len=4 fp8_amax_compute_algo=max", "llama, 2, 2, SELECTIVE, ''",
        "gpt2, 4, 1, FULL, ''", "llama, 2, 1, NONE, fp8_recipe=tensorwise", "gpt2, 2, 2, NONE, fp8_format=e4m3 fp8_recipe=tensorwise"})
    void pipelineStagesTrainLikeOneRankInFp8(String family, int pp, int vpp, org.sparkatron.model.Recompute mode, String recipe)
            throws Exception {
        ModelConfig cfg = ParityRun.config(family, 8);
        Staged one = pipelined(cfg, 1, 1, org.sparkatron.model.Recompute.NONE, recipe).get(0);
        List<Staged> stages = pipelined(cfg, pp, vpp, mode, recipe);
        String what = family + " pp " + pp + " vpp " + vpp + " " + mode + " [" + recipe + "]";
        boolean delayed = !recipe.contains("tensorwise"); // tensorwise state is each cast's own: nothing carries over
        double worstLoss = 0;
        double worstNorm = 0;
        for (int r = 0; r < stages.size(); r++) {
            Staged got = stages.get(r);
            for (int s = 0; s < STEPS; s++) {
                String at = what + ", stage " + r + ", step " + (s + 1);
                if (delayed) {
                    assertEquals(stages.get(0).states()[s], got.states()[s], at + ": every stage holds the same recipe state");
                }
                if (s == 0) {
                    assertEquals(one.losses()[s], got.losses()[s], 0.0, at + ": loss");
                    if (delayed) {
                        assertEquals(one.states()[s], got.states()[s], at + ": recipe state after the first step");
                    }
                    assertEquals(one.norms()[s], got.norms()[s], 1e-6 * one.norms()[s], at + ": gradient norm");
                } else {
                    assertEquals(one.losses()[s], got.losses()[s], 1e-3 * one.losses()[s], at + ": loss");
                    assertEquals(one.norms()[s], got.norms()[s], 2e-2 * one.norms()[s], at + ": gradient norm");
                }
                worstLoss = Math.max(worstLoss, Math.abs(one.losses()[s] - got.losses()[s]) / one.losses()[s]);
                worstNorm = Math.max(worstNorm, Math.abs(one.norms()[s] - got.norms()[s]) / one.norms()[s]);
            }
        }
        System.out.println("Fp8ParallelTest " + what + ": largest relative loss difference " + worstLoss + ", gradient norm " + worstNorm);
    }
}
