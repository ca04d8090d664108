package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

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
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * Checkpoints under context parallelism: CP changes no parameter shard, so a checkpoint saved at TP 2 x CP 2 x
 * DP 2 holds one model and one optimizer file per TP rank (the CP x DP ranks of a shard share the writing), and
 * loads at CP 1, CP 4 and TP 2 x CP 2 with every tensor bitwise what was saved. A CP 2 run killed after step 4
 * and resumed from its checkpoint reproduces the uninterrupted run: bitwise at CP 2 (same layout, same math), and
 * at CP 4 within the CP parity tolerance (ContextParallelParityTest: 5e-5 relative after the first step; the
 * attention's partial sums merge in another order).
 */
@Timeout(value = 240, unit = TimeUnit.SECONDS)
class ContextParallelCheckpointTest {
    @TempDir
    Path tmp;

    /** This rank's TP x CP x DP place and its model, initialised with seed 5, ring attention. */
    private static Transformer model(ModelConfig cfg, ProcessGroups pg) {
        RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), false), Precision.FP32)
                .withContextParallel(new ContextParallel(pg.cp(), ContextParallel.CommType.P2P));
        Transformer m = new Transformer(cfg, ctx);
        m.initialize(5);
        return m;
    }

    /** Gradients averaged over DP x CP, as Megatron reduces them. */
    private static GradientSync averaging(ProcessGroups pg) {
        return new GradientSync() {
            @Override
            public void syncGradients(Tensor grads) {
                if (pg.dpWithCp().size() > 1) {
                    pg.dpWithCp().allReduce(grads, ReduceOp.AVG);
                }
            }

            @Override
            public void averageScalars(Tensor scalars) {
                if (pg.dp().size() > 1) {
                    pg.dp().allReduce(scalars, ReduceOp.AVG);
                }
            }
        };
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void savedAtCp2LoadsAtCp1AndCp4Bitwise(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family);
        LocalStorage fs = new LocalStorage();
        LocalRanks.run(8, (rank, world) -> { // TP 2 x CP 2 x DP 2: two steps, saved
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(8, 2, 2, 1, 1, 1), world)) {
                Transformer m = model(cfg, pg);
                Trainer tr = new Trainer(m, Fixtures.data(cfg, 11 + pg.coords()[3]), Fixtures.options(2), averaging(pg));
                tr.step();
                tr.step();
                new DistributedCheckpoint(fs, tmp.resolve("a").toString(), 2).save(world, 2, m, tr.optimizer(),
                        tr.data().consumed(), Map.of());
                m.close();
                return null;
            }
        });
        reshard(cfg, fs, "a", "b", 1, 1); // CP 1
        reshard(cfg, fs, "b", "c", 1, 4); // CP 4
        reshard(cfg, fs, "c", "d", 2, 2); // TP 2 x CP 2
        Map<String, float[]> a = Fixtures.globalTensors(tmp.resolve("a").resolve(DistributedCheckpoint.dirName(2)));
        for (String other : new String[] {"b", "c", "d"}) {
            Map<String, float[]> o = Fixtures.globalTensors(tmp.resolve(other).resolve(DistributedCheckpoint.dirName(2)));
            assertEquals(a.keySet(), o.keySet(), other + ": same tensors");
            for (String name : a.keySet()) {
                assertArrayEquals(bits(a.get(name)), bits(o.get(name)), other + ": tensor " + name);
            }
        }
        CheckpointMetadata meta = new DistributedCheckpoint(fs, tmp.resolve("a").toString(), 2)
                .metadata(tmp.resolve("a").resolve(DistributedCheckpoint.dirName(2)).toString());
        assertEquals(2, meta.tp());
        assertEquals(2, meta.dp());
        assertEquals(4, meta.files().size(), "a model and an optimizer file per TP rank, none per CP rank");
        assertEquals(2, meta.dataPositions().length, "a data position per DP replica");
    }

    /** Loads checkpoint {@code from} at TP {@code tp} x CP {@code cp} and saves it under {@code to}. */
    private void reshard(ModelConfig cfg, LocalStorage fs, String from, String to, int tp, int cp) throws Exception {
        LocalRanks.run(tp * cp, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(tp * cp, tp, cp, 1, 1, 1), world)) {
                Transformer m = model(cfg, pg);
                Trainer.Options o = Fixtures.options(2);
                AdamW adam = new AdamW(m.params(), m.kernels(), o.beta1(), o.beta2(), o.eps(), o.weightDecay());
                CheckpointMetadata meta = new DistributedCheckpoint(fs, tmp.resolve(from).toString(), 2)
                        .resume(world, m, adam, msg -> { }).orElseThrow();
                new DistributedCheckpoint(fs, tmp.resolve(to).toString(), 2).save(world, 1, m, adam, meta.consumedSamples(),
                        meta.extra());
                m.close();
                return null;
            }
        });
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void killedCp2RunResumesAtCp2BitwiseAndAtCp4WithinTolerance(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family);
        List<Double> whole = run(cfg, tmp.resolve("whole"), 2, 6, -1);
        run(cfg, tmp.resolve("cut"), 2, 6, 4); // killed after step 4, checkpointed every 2 steps
        copy(tmp.resolve("cut"), tmp.resolve("cut4"));
        List<Double> same = run(cfg, tmp.resolve("cut"), 2, 6, -1);
        assertEquals(whole.subList(4, 6), same, "CP 2 resumed at CP 2: losses of steps 5, 6");
        List<Double> wider = run(cfg, tmp.resolve("cut4"), 4, 6, -1);
        for (int i = 0; i < 2; i++) {
            double want = whole.get(4 + i);
            assertEquals(want, wider.get(i), 5e-5 * want, "CP 2 resumed at CP 4: loss of step " + (5 + i));
        }
    }

    /** A CP {@code cp} run to {@code steps}, checkpointed every 2 steps; stops after {@code killAt} when >= 0. Rank 0's losses. */
    private List<Double> run(ModelConfig cfg, Path root, int cp, int steps, int killAt) throws Exception {
        return LocalRanks.run(cp, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(cp, 1, cp, 1, 1, 1), world)) {
                Transformer m = model(cfg, pg);
                m.setDropout(0.1f, 3);
                Trainer tr = new Trainer(m, Fixtures.data(cfg, 21), Fixtures.options(2), averaging(pg));
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
                m.close();
                return losses;
            }
        }).get(0);
    }

    private static void copy(Path from, Path to) throws java.io.IOException {
        try (var walk = java.nio.file.Files.walk(from)) {
            for (Path p : (Iterable<Path>) walk::iterator) {
                Path q = to.resolve(from.relativize(p).toString());
                if (java.nio.file.Files.isDirectory(p)) {
                    java.nio.file.Files.createDirectories(q);
                } else {
                    java.nio.file.Files.copy(p, q);
                }
            }
        }
    }

    private static int[] bits(float[] a) {
        int[] b = new int[a.length];
        for (int i = 0; i < a.length; i++) {
            b[i] = Float.floatToRawIntBits(a[i]);
        }
        return b;
    }
}
