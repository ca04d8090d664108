package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
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
import org.sparkatron.parallel.TpCheckpoint;
import org.sparkatron.train.Trainer;

/**
 * Save at TP 2 x DP 2 after real training steps, load at TP 1 and save, load that at TP 4 and save, load
 * that at TP 2 x DP 1 and save: the four checkpoints hold bitwise-identical global tensors (weights and
 * both AdamW moments), equal to the training ranks' gathered weights. Resharding moves bits, never
 * computes, so the comparison is exact.
 */
class ReshardTest {
    @TempDir
    Path tmp;

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void saveLoadSaveAcrossLayoutsIsBitwiseIdentical(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family);
        LocalStorage fs = new LocalStorage();
        // A: train 2 steps at TP 2 x DP 2 (dropout on, so the dropout counter is part of the state), save.
        List<float[]> trained = LocalRanks.run(4, (rank, world) -> {
            try (Fixtures.Place pl = Fixtures.place(2, 2, world)) {
                Transformer m = Fixtures.model(cfg, pl.tp());
                m.setDropout(0.1f, 3, (long) pl.dpRank() * 2 * Fixtures.SEQ);
                Trainer tr = new Trainer(m, Fixtures.data(cfg, 11 + pl.dpRank()), Fixtures.options(2),
                        new org.sparkatron.train.GradientSync() {
                            @Override
                            public void syncGradients(org.sparkatron.tensor.Tensor g) {
                                pl.groups().dp().allReduce(g, org.sparkatron.comm.ReduceOp.AVG);
                            }

                            @Override
                            public void averageScalars(org.sparkatron.tensor.Tensor scalars) {
                            }
                        });
                tr.step();
                tr.step();
                new DistributedCheckpoint(fs, tmp.resolve("a").toString(), 2).save(world, 2, m, tr.optimizer(),
                        tr.data().consumed(), Map.of("test", "reshard"));
                Transformer full = TpCheckpoint.gatherFull(m, false);
                float[] w = new float[(int) full.params().numel()];
                System.arraycopy(full.params().downloadWeights(), 0, w, 0, w.length);
                return w;
            }
        });
        // B: TP 1.  C: TP 4.  D: TP 2 x DP 1.
        reshard(cfg, fs, "a", "b", 1, 1);
        reshard(cfg, fs, "b", "c", 4, 1);
        reshard(cfg, fs, "c", "d", 2, 1);

        Map<String, float[]> a = Fixtures.globalTensors(tmp.resolve("a").resolve(DistributedCheckpoint.dirName(2)));
        for (String other : new String[] {"b", "c", "d"}) {
            Map<String, float[]> o = Fixtures.globalTensors(tmp.resolve(other).resolve(DistributedCheckpoint.dirName(2)));
            assertEquals(a.keySet(), o.keySet(), other + ": same tensors");
            for (String name : a.keySet()) {
                assertArrayEquals(bits(a.get(name)), bits(o.get(name)), other + ": tensor " + name);
            }
        }
        // The saved weights are the training ranks' weights: checked through a TP = 1 load of checkpoint A.
        Transformer one = Fixtures.model(cfg, org.sparkatron.parallel.TensorParallel.none());
        CheckpointMetadata meta = new DistributedCheckpoint(fs, tmp.resolve("a").toString(), 2)
                .load(tmp.resolve("a").resolve(DistributedCheckpoint.dirName(2)).toString(), one, null);
        float[] loaded = new float[(int) one.params().numel()];
        System.arraycopy(one.params().downloadWeights(), 0, loaded, 0, loaded.length);
        assertArrayEquals(bits(trained.get(0)), bits(loaded));
        assertEquals(2, meta.step());
        assertEquals(2, one.trainSteps(), "dropout counter restored");
        assertArrayEquals(new long[] {4, 4}, meta.dataPositions(), "2 steps x batch 2 per replica");
        assertEquals(8, meta.consumedSamples());
        assertTrue(a.get("optim.v/embed")[0] > 0 || a.get("optim.v/embed")[1] > 0, "optimizer state is not trivially zero");
    }

    /** Loads checkpoint {@code from} at TP {@code tp} x DP {@code dp} and saves it under {@code to}. */
    private void reshard(ModelConfig cfg, LocalStorage fs, String from, String to, int tp, int dp) throws Exception {
        LocalRanks.run(tp * dp, (rank, world) -> {
            try (Fixtures.Place pl = Fixtures.place(tp, dp, world)) {
                Transformer m = Fixtures.model(cfg, pl.tp());
                Trainer.Options o = Fixtures.options(2);
                AdamW adam = new AdamW(m.params(), m.kernels(), o.beta1(), o.beta2(), o.eps(), o.weightDecay());
                DistributedCheckpoint src = new DistributedCheckpoint(fs, tmp.resolve(from).toString(), 2);
                CheckpointMetadata meta = src.resume(world, m, adam, msg -> { }).orElseThrow();
                new DistributedCheckpoint(fs, tmp.resolve(to).toString(), 2).save(world, dp, m, adam,
                        meta.consumedSamples() / dp, meta.extra());
                return null;
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
