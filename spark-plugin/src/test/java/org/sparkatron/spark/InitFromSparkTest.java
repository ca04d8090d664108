package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;

/**
 * {@code init_from}: the job starts from a model directory's weights instead of the seed. Exact checks
 * (CPU, deterministic): a directory holding the seed-7 initialisation reproduces the seed-7 run bitwise
 * at TP 2 through the Estimator (so every TP rank took exactly its shard); a trained directory changes
 * the run; a directory of another model or without weights is refused before anything is launched.
 */
class InitFromSparkTest {
    @TempDir
    Path tmp;

    private static Dataset<Row> data() {
        return SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(100, 9), "tokens", 2);
    }

    private static float[] weights(Transformer m) {
        float[] w = new float[(int) m.params().numel()];
        System.arraycopy(m.params().downloadWeights(), 0, w, 0, w.length);
        return w;
    }

    private static List<Double> losses(List<String> metrics) {
        return metrics.stream().map(DistributedTraining.Result::loss).toList();
    }

    @Test
    @Timeout(150)
    void startsFromTheModelDirectoryAtTpTwo() throws Exception {
        TrainConfig cfg = SharedSpark.config(1, 4, 3).with("tp", "2");
        DistributedTraining.Result seeded = DistributedTraining.run(data(), cfg, null);

        // the seed-7 initialisation written as a model directory: init_from must reproduce the seeded run
        Transformer init = new Transformer(cfg.model(), new CpuDevice());
        init.initialize(cfg.seed);
        Path initDir = tmp.resolve("init");
        ModelStore.save(init, initDir);
        SparkatronEstimator est = new SparkatronEstimator().setInitFrom(initDir.toString()) // model config from config.json
                .setTp(2).setGlobalBatch(4).setSeqLen(16).setSteps(3).setLr(1e-2).setMinLr(1e-3).setWarmupSteps(2)
                .setSeed(7) // the data order's seed; the weights come from init_from
                .setProgress(null);
        SparkatronModel fitted = est.fit(data());
        assertEquals(losses(seeded.metrics()), losses(est.lastResult().metrics()), "losses equal the seeded run's exactly");
        assertArrayEquals(weights(seeded.model()), weights(fitted.newTransformer()), "final weights equal the seeded run's bitwise");

        // a trained directory is a different start: the first loss is that of the trained model
        Path trained = tmp.resolve("trained");
        ModelStore.save(seeded.model(), trained);
        DistributedTraining.Result fromTrained = DistributedTraining.run(data(), cfg.with("init_from", trained.toString()), null);
        assertNotEquals(seeded.firstLoss(), fromTrained.firstLoss());
        assertTrue(fromTrained.firstLoss() < seeded.firstLoss(), "starts from the trained weights: " + fromTrained.firstLoss()
                + " vs " + seeded.firstLoss());
    }

    @Test
    @Timeout(60)
    void refusesAnotherModelOrAMissingDirectory() throws Exception {
        TrainConfig cfg = SharedSpark.config(1, 4, 2);
        Transformer other = new Transformer(cfg.with("model", SharedSpark.tinyModel().put("n_layer", 3)).model(), new CpuDevice());
        other.initialize(1);
        Path otherDir = tmp.resolve("other");
        ModelStore.save(other, otherDir);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> DistributedTraining.run(data(), cfg.with("init_from", otherDir.toString()), null));
        assertTrue(e.getMessage().contains("init_from '" + otherDir + "' holds another model") && e.getMessage().contains("n_layer 3"),
                e.getMessage());

        Path missing = tmp.resolve("nothing-here");
        com.fasterxml.jackson.databind.node.ObjectNode noModel = cfg.toJson();
        noModel.remove("model");
        noModel.put("init_from", missing.toString());
        e = assertThrows(IllegalArgumentException.class, () -> TrainConfig.fromJson(noModel), "no model config to take");
        assertTrue(e.getMessage().contains("is not a model directory: config.json is missing"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(data(), cfg.with("init_from", missing.toString()), null));
        assertTrue(e.getMessage().contains("is not a model directory: config.json is missing"), e.getMessage());
    }
}
