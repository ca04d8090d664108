package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.train.GradientSync;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * Checkpoints of pipeline-parallel runs: each stage writes its own layers (a tied embedding once, by the
 * first stage), and a checkpoint saved at PP 2 resumes at PP 1 and PP 4 and back (with TP too), every
 * tensor bitwise what was saved (resharding moves bits, never computes). A PP 2 run killed and resumed
 * from its checkpoint reproduces the uninterrupted PP 2 run bitwise (same layout, same math).
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class PipelineCheckpointTest {
    @TempDir
    Path tmp;

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void savedAtPp2LoadsAtPp1AndPp4AndBackBitwise(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family, family.equals("gpt2") ? 67 : 61, 32, 4);
        LocalStorage fs = new LocalStorage();
        LocalRanks.run(2, (rank, world) -> { // A: two steps at PP 2, dropout on, saved
            try (Fixtures.Place pl = Fixtures.place(1, 1, 2, world)) {
                Transformer m = Fixtures.model(cfg, pl);
                m.setDropout(0.1f, 3);
                Trainer tr = new Trainer(m, Fixtures.data(cfg, 11), Fixtures.options(2), GradientSync.NONE);
                tr.step();
                tr.step();
                new DistributedCheckpoint(fs, tmp.resolve("a").toString(), 2).save(world, 1, m, tr.optimizer(),
                        tr.data().consumed(), Map.of());
                return null;
            }
        });
        reshard(cfg, fs, "a", "b", 1, 1);  // PP 1
        reshard(cfg, fs, "b", "c", 1, 4);  // PP 4
        reshard(cfg, fs, "c", "d", 2, 2);  // TP 2 x PP 2
        reshard(cfg, fs, "d", "e", 1, 2);  // back to PP 2
        Map<String, float[]> a = Fixtures.globalTensors(tmp.resolve("a").resolve(DistributedCheckpoint.dirName(2)));
        assertTrue(a.containsKey("model/layers.3.mlp.down.w") && a.containsKey("optim.v/norm_f.w"), a.keySet().toString());
        for (String other : new String[] {"b", "c", "d", "e"}) {
            Map<String, float[]> o = Fixtures.globalTensors(tmp.resolve(other).resolve(DistributedCheckpoint.dirName(2)));
            assertEquals(a.keySet(), o.keySet(), other + ": same tensors");
            for (String name : a.keySet()) {
                assertArrayEquals(bits(a.get(name)), bits(o.get(name)), other + ": tensor " + name);
            }
        }
        CheckpointMetadata meta = new DistributedCheckpoint(fs, tmp.resolve("c").toString(), 2)
                .metadata(tmp.resolve("c").resolve(DistributedCheckpoint.dirName(2)).toString());
        assertEquals(4, meta.pp());
        assertEquals(8, meta.files().size(), "model and optimizer file per stage");
    }

    /** Loads checkpoint {@code from} at TP {@code tp} x PP {@code pp} and saves it under {@code to}. */
    private void reshard(ModelConfig cfg, LocalStorage fs, String from, String to, int tp, int pp) throws Exception {
        LocalRanks.run(tp * pp, (rank, world) -> {
            try (Fixtures.Place pl = Fixtures.place(tp, 1, pp, world)) {
                Transformer m = Fixtures.model(cfg, pl);
                Trainer.Options o = Fixtures.options(2);
                AdamW adam = new AdamW(m.params(), m.kernels(), o.beta1(), o.beta2(), o.eps(), o.weightDecay());
                CheckpointMetadata meta = new DistributedCheckpoint(fs, tmp.resolve(from).toString(), 2)
                        .resume(world, m, adam, msg -> { }).orElseThrow();
                new DistributedCheckpoint(fs, tmp.resolve(to).toString(), 2).save(world, 1, m, adam, meta.consumedSamples(),
                        meta.extra());
                return null;
            }
        });
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void killedAndResumedPp2RunMatchesTheUninterruptedRun(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family, family.equals("gpt2") ? 67 : 61, 32, 4);
        List<List<Double>> whole = run(cfg, tmp.resolve("whole"), 6, -1);
        run(cfg, tmp.resolve("cut"), 6, 4);                      // killed after step 4, checkpointed every 2 steps
        List<List<Double>> resumed = run(cfg, tmp.resolve("cut"), 6, -1);
        for (int rank = 0; rank < 2; rank++) {
            assertEquals(whole.get(rank).subList(4, 6), resumed.get(rank), "rank " + rank + ": losses of steps 5, 6");
        }
    }

    /**
     * The same under fp8 with delayed scaling (amax history 4, max): the recipe state, which every stage holds for
     * the whole model, is saved with the checkpoint and restored on both stages, so the resumed run's losses and
     * final recipe state are bitwise the uninterrupted run's.
     */
    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void killedAndResumedPp2Fp8RunMatchesTheUninterruptedRun(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family, family.equals("gpt2") ? 67 : 61, 32, 4);
        String[] wholeState = new String[2];
        String[] resumedState = new String[2];
        List<List<Double>> whole = run(cfg, tmp.resolve("whole"), 6, -1, Precision.FP8, wholeState);
        run(cfg, tmp.resolve("cut"), 6, 4, Precision.FP8, new String[2]);
        DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("cut").toString(), 3);
        String saved = dc.metadata(dc.dir(4)).extra().get(org.sparkatron.precision.Fp8State.CHECKPOINT_KEY);
        assertTrue(saved != null && saved.startsWith("v1 4 48 "), "the fp8 state of all 4 layers in the checkpoint: " + saved);
        List<List<Double>> resumed = run(cfg, tmp.resolve("cut"), 6, -1, Precision.FP8, resumedState);
        for (int rank = 0; rank < 2; rank++) {
            assertEquals(whole.get(rank).subList(4, 6), resumed.get(rank), "rank " + rank + ": fp8 losses of steps 5, 6");
            assertEquals(wholeState[rank], resumedState[rank], "rank " + rank + ": recipe state after step 6");
        }
        assertEquals(wholeState[0], wholeState[1], "both stages hold the same recipe state");
    }

    private List<List<Double>> run(ModelConfig cfg, Path root, int steps, int killAt) throws Exception {
        return run(cfg, root, steps, killAt, Precision.FP32, new String[2]);
    }

    /**
     * A PP 2 run to {@code steps} with checkpoints every 2 steps; stops after {@code killAt} when >= 0. Under fp8,
     * {@code fp8State[rank]} gets each rank's final recipe state.
     */
    private List<List<Double>> run(ModelConfig cfg, Path root, int steps, int killAt, Precision precision, String[] fp8State)
            throws Exception {
        return LocalRanks.run(2, (rank, world) -> {
            try (Fixtures.Place pl = Fixtures.place(1, 1, 2, world)) {
                Transformer m = precision == Precision.FP8
                        ? Fixtures.model(cfg, pl, precision, org.sparkatron.precision.Fp8Recipe.parse(
                                Map.of("fp8_amax_history_len", "4", "fp8_amax_compute_algo", "max")::get))
                        : Fixtures.model(cfg, pl);
                m.setDropout(0.1f, 3);
                Trainer tr = new Trainer(m, Fixtures.data(cfg, 21), Fixtures.options(2), GradientSync.NONE);
                DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), 3);
                ResumableTraining rt = new ResumableTraining(tr, dc, world, 1,
                        new ResumableTraining.Options(2, false, Map.of()), msg -> { });
                long first = rt.resume() + 1;
                List<Double> losses = new ArrayList<>();
                for (long s = first; s <= steps; s++) {
                    losses.add(tr.step().loss());
                    if (s % 2 == 0) {
                        rt.save();
                    }
                    if (s == killAt) {
                        break;
                    }
                }
                if (m.fp8() != null) {
                    fp8State[rank] = m.fp8().saveState();
                }
                return losses;
            }
        });
    }

    private static int[] bits(float[] a) {
        int[] b = new int[a.length];
        for (int i = 0; i < a.length; i++) {
            b[i] = Float.floatToRawIntBits(a[i]);
        }
        return b;
    }
}
