package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * A run killed mid-way and restarted from its checkpoint directory reproduces the uninterrupted run
 * exactly on CPU: the same loss at every step and bitwise the same final weights. Dropout is on and the
 * learning rate follows a warm-up + cosine schedule, so the dropout counter, the AdamW step and moments,
 * and the data position must all be restored for the numbers to match.
 */
class ResumeTest {
    private static final int TOTAL = 9;

    @TempDir
    Path tmp;

    /** Thrown to simulate the process dying between steps. */
    private static final class Killed extends RuntimeException {
    }

    private static Trainer trainer(ModelConfig cfg) {
        return trainer(cfg, org.sparkatron.parallel.RankContext.single(org.sparkatron.device.TestDevices.create()));
    }

    private static Trainer trainer(ModelConfig cfg, org.sparkatron.parallel.RankContext ctx) {
        Transformer m = new Transformer(cfg, ctx);
        m.initialize(5);
        m.setDropout(0.1f, 3);
        return new Trainer(m, Fixtures.data(cfg, 21), Fixtures.options(2));
    }

    private static float[] weights(Trainer t) {
        float[] w = new float[(int) t.model().params().numel()];
        System.arraycopy(t.model().params().downloadWeights(), 0, w, 0, w.length);
        return w;
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void killedAndResumedRunMatchesTheUninterruptedRun(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family);
        Trainer ref = trainer(cfg);
        List<Double> refLoss = new ArrayList<>();
        for (int s = 0; s < TOTAL; s++) {
            refLoss.add(ref.step().loss());
        }

        DistributedCheckpoint ckpt = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("ckpt").toString(), 2);
        List<String> log = new ArrayList<>();
        ResumableTraining.Options opts = new ResumableTraining.Options(3, false, Map.of("seed", "5"));
        Trainer first = trainer(cfg);
        ResumableTraining run1 = new ResumableTraining(first, ckpt, new SelfCommunicator(), 1, opts, log::add);
        assertEquals(0, run1.resume());
        List<Double> losses = new ArrayList<>();
        assertThrows(Killed.class, () -> run1.run(TOTAL, m -> {
            losses.add(m.loss());
            if (m.step() == 7) {
                throw new Killed(); // dies after step 7: steps 7 is lost, step 6 is the last checkpoint
            }
        }));
        assertEquals(List.of(6L, 3L), ckpt.committedSteps(), "checkpoints every 3 steps, keep 2");

        Trainer second = trainer(cfg);
        ResumableTraining run2 = new ResumableTraining(second, ckpt, new SelfCommunicator(), 1, opts, log::add);
        assertEquals(6, run2.resume());
        assertTrue(log.get(log.size() - 1).contains("resumed from") && log.get(log.size() - 1).contains("step 6"), log.toString());
        List<Double> resumed = new ArrayList<>(losses.subList(0, 6));
        for (Trainer.StepMetrics m : run2.run(TOTAL, null)) {
            resumed.add(m.loss());
        }
        assertEquals(refLoss, resumed, "loss trajectory of the resumed run");
        assertEquals(refLoss.subList(0, 7), losses, "the first run's steps before the kill");
        assertArrayEquals(weights(ref), weights(second), "final weights");
        assertEquals(List.of(9L, 6L), ckpt.committedSteps(), "final checkpoint at the end of training");
    }

    private static org.sparkatron.parallel.RankContext fp8(String scaling) {
        return new org.sparkatron.parallel.RankContext(org.sparkatron.device.TestDevices.create(),
                org.sparkatron.parallel.TensorParallel.none(), org.sparkatron.precision.Precision.FP8,
                org.sparkatron.precision.Fp8Recipe.parse(Map.of("fp8_recipe", scaling, "fp8_amax_history_len", "4",
                        "fp8_amax_compute_algo", "max")::get));
    }

    /**
     * FP8 with delayed scaling over a 4-pass max window: the recipe state (amax history, scales) is part of the
     * checkpoint, so the resumed run is bitwise the uninterrupted one; resuming the same checkpoint with the
     * recipe state reset (scales 1, empty history) does not reproduce it, so the restored state is what matters.
     */
    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void fp8RecipeStateResumesBitwise(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family);
        Trainer ref = trainer(cfg, fp8("delayed"));
        List<Double> refLoss = new ArrayList<>();
        for (int s = 0; s < TOTAL; s++) {
            refLoss.add(ref.step().loss());
        }
        DistributedCheckpoint ckpt = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("ckpt").toString(), 2);
        ResumableTraining.Options opts = new ResumableTraining.Options(3, false, Map.of());
        Trainer first = trainer(cfg, fp8("delayed"));
        ResumableTraining run1 = new ResumableTraining(first, ckpt, new SelfCommunicator(), 1, opts, s -> { });
        run1.resume();
        List<Double> losses = new ArrayList<>();
        assertThrows(Killed.class, () -> run1.run(TOTAL, m -> {
            losses.add(m.loss());
            if (m.step() == 5) {
                throw new Killed(); // the last checkpoint is step 3
            }
        }));
        String savedState = ckpt.metadata(ckpt.dir(3)).extra().get(org.sparkatron.precision.Fp8State.CHECKPOINT_KEY);
        assertTrue(savedState != null && savedState.startsWith("v1 4 24 "), "fp8 state in the checkpoint: " + savedState);

        Trainer second = trainer(cfg, fp8("delayed"));
        ResumableTraining run2 = new ResumableTraining(second, ckpt, new SelfCommunicator(), 1, opts, s -> { });
        assertEquals(3, run2.resume());
        assertEquals(savedState, second.model().fp8().saveState(), "restored recipe state");
        List<Double> resumed = new ArrayList<>(losses.subList(0, 3));
        for (Trainer.StepMetrics m : run2.run(TOTAL, null)) {
            resumed.add(m.loss());
        }
        assertEquals(refLoss, resumed, "loss trajectory of the resumed fp8 run");
        assertArrayEquals(weights(ref), weights(second), "final weights");
        assertEquals(ref.model().fp8().saveState(), second.model().fp8().saveState(), "final recipe state");

        long position = ckpt.metadata(ckpt.dir(6)).dataPositions()[0];
        Trainer reset = trainer(cfg, fp8("delayed"));
        ckpt.load(ckpt.dir(6), reset.model(), reset.optimizer());
        reset.data().skip(position);
        String fresh = trainer(cfg, fp8("delayed")).model().fp8().saveState();
        reset.model().fp8().restoreState(fresh); // the control: the same checkpoint without its recipe state
        double lossReset = reset.step().loss();
        Trainer restored = trainer(cfg, fp8("delayed"));
        ckpt.load(ckpt.dir(6), restored.model(), restored.optimizer());
        restored.data().skip(position);
        double lossRestored = restored.step().loss();
        assertEquals(refLoss.get(6), lossRestored, "step 7 from the step-6 checkpoint");
        assertTrue(lossReset != lossRestored, "without the recipe state step 7 differs (" + lossReset + ")");
    }

    @Test
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void startOverIgnoresAndDeletesExistingCheckpoints() throws Exception {
        ModelConfig cfg = Fixtures.config("gpt2");
        DistributedCheckpoint ckpt = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("ckpt").toString(), 3);
        Trainer a = trainer(cfg);
        new ResumableTraining(a, ckpt, new SelfCommunicator(), 1, new ResumableTraining.Options(2, false, null), s -> { })
                .run(4, null);
        assertEquals(List.of(4L, 2L), ckpt.committedSteps());
        Trainer b = trainer(cfg);
        List<String> log = new ArrayList<>();
        ResumableTraining fresh = new ResumableTraining(b, ckpt, new SelfCommunicator(), 1,
                new ResumableTraining.Options(2, true, null), log::add);
        assertEquals(0, fresh.resume());
        assertEquals(List.of(), ckpt.committedSteps());
        assertEquals(0, b.optimizer().step());
        assertTrue(log.get(0).contains("starting over"), log.toString());
    }
}
