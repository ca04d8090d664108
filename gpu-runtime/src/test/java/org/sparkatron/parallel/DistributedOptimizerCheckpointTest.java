package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.checkpoint.LocalStorage;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * Checkpoints of the distributed optimizer's sharded state (fp32 master weights, AdamW moments) through the
 * real resume path ({@link ResumableTraining}, {@link DistributedCheckpoint}): a run interrupted after two of
 * four steps and resumed at the same layout computes bitwise what the uninterrupted run computes; resumed at
 * another DP size (2 to 4, 4 to 2) or another TP / PP layout it equals the uninterrupted run within the
 * data-parallel parity tolerances (only fp32 summation order differs: the global batch of 4 samples per
 * micro-batch is split over other replicas). With {@code overlap_param_gather} (saves right after an update
 * whose gather is deferred) the run and its resume are bitwise those of the gather after the update. A resume that lost the moments, or put a shard at the wrong
 * elements, moves weights by about a learning rate (1e-2) and fails both.
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class DistributedOptimizerCheckpointTest {
    private static final DataParallel.Config DISTOPT = new DataParallel.Config(true, 600, true);
    private static final int GLOBAL_BATCH = 4; // samples per micro-batch over all replicas
    private static final int MICRO = 2;

    @TempDir
    Path tmp;

    /** A TP x DP x PP layout. */
    record Layout(int tp, int dp, int pp) {
        int world() {
            return tp * dp * pp;
        }
    }

    /** Every rank's losses of the steps it ran, and the weights after its last step by name (all stages merged). */
    record Run(List<List<Double>> losses, Map<String, float[]> weights) {
    }

    @Test
    void resumeAtTheSameLayoutIsBitwiseTheUninterruptedRun() throws Exception {
        ModelConfig cfg = ParityRun.config("gpt2", 2);
        Layout l = new Layout(1, 2, 1);
        Run whole = train(cfg, l, Precision.FP32, tmp.resolve("whole").toString(), 4);
        train(cfg, l, Precision.FP32, tmp.resolve("split").toString(), 2);
        Run resumed = train(cfg, l, Precision.FP32, tmp.resolve("split").toString(), 4);
        for (int rank = 0; rank < l.world(); rank++) {
            assertEquals(2, resumed.losses().get(rank).size(), "the resumed run ran steps 3 and 4 only");
            for (int s = 0; s < 2; s++) {
                assertEquals(whole.losses().get(rank).get(2 + s), resumed.losses().get(rank).get(s), 0.0,
                        "rank " + rank + " step " + (3 + s) + ": loss");
            }
        }
        for (Map.Entry<String, float[]> e : whole.weights().entrySet()) {
            assertArrayEquals(e.getValue(), resumed.weights().get(e.getKey()), "weight " + e.getKey());
        }
    }

    /**
     * An asynchronous save (Megatron's --async-save) of the sharded state at step 2, written while step 3 trains
     * (step 3's own checkpoint is then removed), resumes bitwise: the gathered state was copied before the
     * next step reused the gradient block.
     */
    @Test
    void asyncSaveOfTheShardedStateResumesBitwise() throws Exception {
        ModelConfig cfg = ParityRun.config("gpt2", 2);
        Layout l = new Layout(1, 2, 1);
        Run whole = train(cfg, l, Precision.FP32, tmp.resolve("whole").toString(), 4);
        train(cfg, l, Precision.FP32, tmp.resolve("async").toString(), 3, 2, true);
        Path third = tmp.resolve("async").resolve(DistributedCheckpoint.dirName(3));
        assertTrue(java.nio.file.Files.isDirectory(third), "the final save of step 3");
        try (java.util.stream.Stream<Path> files = java.nio.file.Files.walk(third)) {
            files.sorted(java.util.Comparator.reverseOrder()).forEach(f -> f.toFile().delete());
        }
        Run resumed = train(cfg, l, Precision.FP32, tmp.resolve("async").toString(), 4);
        assertEquals(2, resumed.losses().get(0).size(), "resumed from the asynchronous save of step 2");
        for (int s = 0; s < 2; s++) {
            assertEquals(whole.losses().get(0).get(2 + s), resumed.losses().get(0).get(s), 0.0, "step " + (3 + s) + ": loss");
        }
        for (Map.Entry<String, float[]> e : whole.weights().entrySet()) {
            assertArrayEquals(e.getValue(), resumed.weights().get(e.getKey()), "weight " + e.getKey());
        }
    }

    /** bf16: the fp32 master shard is what the checkpoint keeps (the 16-bit weights would lose its low bits). */
    @Test
    void bf16ResumeKeepsTheFp32MasterBitwise() throws Exception {
        ModelConfig cfg = ParityRun.config("llama", 2);
        Layout l = new Layout(1, 2, 1);
        Run whole = train(cfg, l, Precision.BF16, tmp.resolve("whole").toString(), 4);
        train(cfg, l, Precision.BF16, tmp.resolve("split").toString(), 2);
        Run resumed = train(cfg, l, Precision.BF16, tmp.resolve("split").toString(), 4);
        for (int s = 0; s < 2; s++) {
            assertEquals(whole.losses().get(0).get(2 + s), resumed.losses().get(0).get(s), 0.0, "step " + (3 + s) + ": loss");
        }
        for (Map.Entry<String, float[]> e : whole.weights().entrySet()) {
            assertArrayEquals(e.getValue(), resumed.weights().get(e.getKey()), "master weight " + e.getKey());
        }
    }

    /**
     * With {@code overlap_param_gather} every save comes right after an update whose all-gather waits for the
     * next forward: the save completes it first (otherwise the files would hold other replicas' stale shards).
     * The run equals the one that gathers after the update, and its resume from step 2 equals it, bitwise.
     */
    @ParameterizedTest(name = "{0}, async save {1}")
    @CsvSource({"FP32, false", "FP32, true", "BF16, false"})
    void overlappedParameterGatherSavesAndResumesBitwise(Precision precision, boolean async) throws Exception {
        ModelConfig cfg = ParityRun.config("gpt2", 2);
        Layout l = new Layout(1, 2, 1);
        DataParallel.Config overlapped = DISTOPT.withOverlapParamGather(true);
        Run after = train(cfg, l, precision, DISTOPT, tmp.resolve("after").toString(), 4, 0, false);
        Run whole = train(cfg, l, precision, overlapped, tmp.resolve("whole").toString(), 4, 0, false);
        train(cfg, l, precision, overlapped, tmp.resolve("split").toString(), 2, 1, async);
        Run resumed = train(cfg, l, precision, overlapped, tmp.resolve("split").toString(), 4, 0, false);
        for (int rank = 0; rank < l.world(); rank++) {
            assertEquals(after.losses().get(rank), whole.losses().get(rank), "rank " + rank + ": losses, overlapped gather or not");
            for (int s = 0; s < 2; s++) {
                assertEquals(whole.losses().get(rank).get(2 + s), resumed.losses().get(rank).get(s), 0.0,
                        "rank " + rank + " step " + (3 + s) + ": resumed loss");
            }
        }
        for (Map.Entry<String, float[]> e : whole.weights().entrySet()) {
            assertArrayEquals(after.weights().get(e.getKey()), e.getValue(), "weight " + e.getKey() + ", overlapped gather or not");
            assertArrayEquals(e.getValue(), resumed.weights().get(e.getKey()), "weight " + e.getKey() + " after the resume");
        }
    }

    @ParameterizedTest(name = "{0}: TP {1} x DP {2} x PP {3} -> TP {4} x DP {5} x PP {6}")
    @CsvSource({
        "gpt2, 1, 2, 1, 1, 4, 1",
        "llama, 1, 4, 1, 1, 2, 1",
        "gpt2, 1, 2, 1, 2, 2, 1",
        "llama, 2, 2, 1, 1, 2, 2",
        "gpt2, 1, 2, 2, 1, 4, 1",
    })
    void resumeAtAnotherLayoutEqualsTheUninterruptedRun(String family, int tpA, int dpA, int ppA, int tpB, int dpB, int ppB)
            throws Exception {
        ModelConfig cfg = ParityRun.config(family, 2);
        Layout a = new Layout(tpA, dpA, ppA);
        Layout b = new Layout(tpB, dpB, ppB);
        Run whole = train(cfg, a, Precision.FP32, tmp.resolve("whole").toString(), 4);
        train(cfg, a, Precision.FP32, tmp.resolve("split").toString(), 2);
        Run resumed = train(cfg, b, Precision.FP32, tmp.resolve("split").toString(), 4);
        double want3 = whole.losses().get(0).get(2);
        double want4 = whole.losses().get(0).get(3);
        for (int rank = 0; rank < b.world(); rank++) {
            assertEquals(want3, resumed.losses().get(rank).get(0), 5e-5 * want3, "rank " + rank + " step 3: loss");
            assertEquals(want4, resumed.losses().get(rank).get(1), 5e-5 * want4, "rank " + rank + " step 4: loss");
        }
        assertEquals(whole.weights().keySet(), resumed.weights().keySet());
        float moved = 0;
        for (Map.Entry<String, float[]> e : whole.weights().entrySet()) {
            PipelineParityTest.close(family + " weight " + e.getKey(), e.getValue(), resumed.weights().get(e.getKey()), 1e-4, 1e-3);
            moved = Math.max(moved, Math.abs(e.getValue()[0]));
        }
        assertTrue(moved > 0, "weights were compared");
    }

    /**
     * Trains layout {@code l} with the distributed optimizer up to step {@code toStep}, resuming from the newest
     * checkpoint under {@code root} if there is one, and saving one at the end.
     */
    private static Run train(ModelConfig cfg, Layout l, Precision precision, String root, long toStep) throws Exception {
        return train(cfg, l, precision, root, toStep, 0, false);
    }

    /** {@link #train} saving also every {@code saveEvery} steps, in the background when {@code async}. */
    private static Run train(ModelConfig cfg, Layout l, Precision precision, String root, long toStep, int saveEvery,
                             boolean async) throws Exception {
        return train(cfg, l, precision, DISTOPT, root, toStep, saveEvery, async);
    }

    /** {@link #train} with data-parallel configuration {@code ddp}. */
    private static Run train(ModelConfig cfg, Layout l, Precision precision, DataParallel.Config ddp, String root, long toStep,
                             int saveEvery, boolean async) throws Exception {
        int world = l.world();
        List<Object[]> perRank = LocalRanks.run(world, (rank, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(world, l.tp(), 1, 1, l.pp(), 1);
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                PipelineParallel stage = new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), l.pp(), 1, -1, -1),
                        pg.embedding());
                RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), false), precision, stage,
                        new DataParallel(pg.dp(), ddp));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                int dpRank = pg.coords()[3];
                int batch = GLOBAL_BATCH / l.dp();
                Trainer tr = new Trainer(m, ParityRun.source(cfg, dpRank, l.dp(), batch), PipelineRun.options(batch, MICRO));
                ResumableTraining rt = new ResumableTraining(tr, new DistributedCheckpoint(new LocalStorage(), root, 2), comm,
                        l.dp(), new ResumableTraining.Options(saveEvery, false, Map.of(), async), msg -> {
                        });
                rt.resume();
                List<Double> losses = new ArrayList<>();
                for (Trainer.StepMetrics sm : rt.run(toStep, null)) {
                    losses.add(sm.loss());
                }
                rt.close();
                tr.distributedOptimizer().gatherMasterWeights();
                Transformer full = TpCheckpoint.gatherFull(m, false);
                Map<String, float[]> all = PipelineRun.byName(full, false);
                Map<String, float[]> mine = new LinkedHashMap<>();
                for (ParameterSet.Param p : m.params().params()) { // this stage's parameters
                    mine.put(p.name(), all.get(p.name()));
                }
                full.close();
                m.close();
                return new Object[] {losses, mine};
            }
        });
        List<List<Double>> losses = new ArrayList<>();
        Map<String, float[]> weights = new TreeMap<>();
        for (Object[] r : perRank) {
            @SuppressWarnings("unchecked")
            List<Double> ls = (List<Double>) r[0];
            losses.add(ls);
            @SuppressWarnings("unchecked")
            Map<String, float[]> w = (Map<String, float[]>) r[1];
            weights.putAll(w);
        }
        return new Run(losses, weights);
    }
}
