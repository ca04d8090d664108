package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.ModelStore;

/**
 * Issue 22, finding 3: nothing the user had is overwritten. A job whose save fails half-way (a full disk,
 * injected by {@link FaultyFileSystem}) leaves the previous run in the output exactly as it was -- model,
 * ranks.json, and (the job not resuming from checkpoints) metrics.jsonl and loss.svg -- because results are
 * written under {@code _temporary/} and moved into place only at the end; an output that is the job's own
 * input (the data, or the {@code init_from} model) is refused before anything runs.
 */
@Timeout(400) // three small jobs; generous for a loaded 2-core machine
class OutputCommitTest {
    @TempDir
    Path dir;

    private static Dataset<Row> data() {
        return SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(100, 9), "tokens", 2);
    }

    @Test
    void aSaveThatFailsHalfWayLeavesThePreviousModelAsItWas() throws Exception {
        SharedSpark.get().sparkContext().hadoopConfiguration().set("fs." + FaultyFileSystem.SCHEME + ".impl",
                FaultyFileSystem.class.getName());
        Path out = dir.resolve("out");
        DistributedTraining.run(data(), SharedSpark.config(2, 4, 2).with("output", out.toString()), null);
        byte[] weights = Files.readAllBytes(out.resolve(ModelStore.WEIGHTS));
        byte[] config = Files.readAllBytes(out.resolve(ModelStore.CONFIG));
        byte[] ranks = Files.readAllBytes(out.resolve("ranks.json"));
        byte[] metrics = Files.readAllBytes(out.resolve(MetricsLog.FILE));
        byte[] plot = Files.readAllBytes(out.resolve(TrainingMonitor.PLOT));
        assertFalse(Files.exists(out.resolve(OutputCommit.TEMPORARY)), "nothing left under _temporary after a success");

        // the same output through a disk that fills up while the new model.safetensors is written
        Exception e = assertThrows(Exception.class, () -> DistributedTraining.run(data(),
                SharedSpark.config(2, 4, 3).with("seed", "8").with("output", FaultyFileSystem.SCHEME + "://" + out), null));
        assertTrue(String.valueOf(e.getMessage()).contains("No space left on device"), String.valueOf(e.getMessage()));
        assertArrayEquals(weights, Files.readAllBytes(out.resolve(ModelStore.WEIGHTS)), "the previous weights are intact");
        assertArrayEquals(config, Files.readAllBytes(out.resolve(ModelStore.CONFIG)));
        assertArrayEquals(ranks, Files.readAllBytes(out.resolve("ranks.json")));
        // a fresh job (no checkpoints to resume) keeps its history beside its own model: not replaced at its start
        assertArrayEquals(metrics, Files.readAllBytes(out.resolve(MetricsLog.FILE)), "the previous run's metrics.jsonl is intact");
        assertArrayEquals(plot, Files.readAllBytes(out.resolve(TrainingMonitor.PLOT)));
        assertFalse(Files.exists(out.resolve(OutputCommit.TEMPORARY)), "the failed job's staging directory is removed");

        // and a job that succeeds replaces them
        DistributedTraining.run(data(), SharedSpark.config(2, 4, 3).with("seed", "8").with("output", out.toString()), null);
        assertFalse(Arrays.equals(weights, Files.readAllBytes(out.resolve(ModelStore.WEIGHTS))), "the new model is in place");
        assertFalse(Files.exists(out.resolve(OutputCommit.TEMPORARY)));
        ModelStore.load(out, new org.sparkatron.device.cpu.CpuDevice()); // a consistent model directory
    }

    @Test
    void anOutputThatIsAnInputIsRefusedBeforeAnythingRuns() throws Exception {
        Path model = dir.resolve("start");
        TrainConfig cfg = SharedSpark.config(2, 4, 2);
        org.sparkatron.model.Transformer m = new org.sparkatron.model.Transformer(cfg.model(), new org.sparkatron.device.cpu.CpuDevice());
        m.initialize(1);
        ModelStore.save(m, model);
        byte[] before = Files.readAllBytes(model.resolve(ModelStore.WEIGHTS));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(data(),
                cfg.with("init_from", model.toString()).with("output", model + "/"), null));
        assertTrue(e.getMessage().contains("is the init_from model directory"), e.getMessage());
        assertArrayEquals(before, Files.readAllBytes(model.resolve(ModelStore.WEIGHTS)));

        Path input = dir.resolve("tokens.parquet");
        for (String output : new String[] {input.toString(), input.resolve("model").toString()}) {
            e = assertThrows(IllegalArgumentException.class, () -> TrainMain.run(SharedSpark.get(),
                    cfg.with("input", input.toString()).with("output", output), null));
            assertTrue(e.getMessage().contains("the model files would be written into the training data"), e.getMessage());
        }
    }
}
