package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
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
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.TpCheckpoint;
import org.sparkatron.train.Trainer;

/**
 * {@code export}: a checkpoint saved at TP 2 becomes a Hugging Face model directory whose weights are
 * bitwise the trained weights, under Hugging Face tensor names; bad arguments and damaged checkpoints
 * are reported.
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class ExportTest {
    @TempDir
    Path tmp;

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void exportsTheTrainedWeightsInHuggingFaceLayout(String family) throws Exception {
        ModelConfig cfg = Fixtures.config(family);
        Path root = tmp.resolve("ckpt");
        List<float[]> trained = LocalRanks.run(2, (rank, world) -> {
            try (Fixtures.Place pl = Fixtures.place(2, 1, world)) {
                Transformer m = Fixtures.model(cfg, pl.tp());
                Trainer tr = new Trainer(m, Fixtures.data(cfg, 3), Fixtures.options(2));
                tr.step();
                new DistributedCheckpoint(new LocalStorage(), root.toString(), 1).save(world, 1, m, tr.optimizer(),
                        tr.data().consumed(), Map.of());
                Transformer full = TpCheckpoint.gatherFull(m, false);
                float[] w = new float[(int) full.params().numel()];
                System.arraycopy(full.params().downloadWeights(), 0, w, 0, w.length);
                return w;
            }
        });
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ExportCommand.run(new String[] {"export", "--checkpoint", root.toString(), "--out", tmp.resolve("hf").toString()},
                new PrintStream(out, true, StandardCharsets.UTF_8));
        assertTrue(out.toString(StandardCharsets.UTF_8).contains(DistributedCheckpoint.dirName(1)));
        Transformer back = ModelStore.load(tmp.resolve("hf"), TestDevices.create());
        assertEquals(cfg, back.config());
        float[] w = new float[(int) back.params().numel()];
        System.arraycopy(back.params().downloadWeights(), 0, w, 0, w.length);
        assertArrayEquals(trained.get(0), w);
        try (SafeTensorsFile st = SafeTensors.open(tmp.resolve("hf").resolve(ModelStore.WEIGHTS))) {
            assertTrue(st.contains(family.equals("gpt2") ? "transformer.wte.weight" : "model.embed_tokens.weight"), st.names().toString());
        }
    }

    @Test
    void refusesBadArgumentsAndFallsBackPastDamage() throws Exception {
        PrintStream sink = new PrintStream(new ByteArrayOutputStream(), true, StandardCharsets.UTF_8);
        IllegalArgumentException none = assertThrows(IllegalArgumentException.class, () -> ExportCommand.run(
                new String[] {"--checkpoint", tmp.toString(), "--out", tmp.resolve("o").toString()}, sink));
        assertTrue(none.getMessage().contains("no checkpoint here"), none.getMessage());
        IllegalArgumentException usage = assertThrows(IllegalArgumentException.class,
                () -> ExportCommand.run(new String[] {"--checkpoint", tmp.toString()}, sink));
        assertTrue(usage.getMessage().contains("usage"), usage.getMessage());

        ModelConfig cfg = Fixtures.config("gpt2");
        DistributedCheckpoint c = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("c").toString(), 3);
        Transformer m = Fixtures.model(cfg, org.sparkatron.parallel.TensorParallel.none());
        Trainer tr = new Trainer(m, Fixtures.data(cfg, 3), Fixtures.options(2));
        tr.step();
        c.save(new org.sparkatron.comm.SelfCommunicator(), 1, m, tr.optimizer(), 2, Map.of());
        tr.step();
        c.save(new org.sparkatron.comm.SelfCommunicator(), 1, m, tr.optimizer(), 4, Map.of());
        Files.write(Path.of(c.dir(2)).resolve("model-tp00-of01.safetensors"), new byte[] {1, 2, 3});
        List<String> log = new ArrayList<>();
        String used = ExportCommand.export(tmp.resolve("c"), tmp.resolve("hf1"), -1, log::add);
        assertEquals(c.dir(1), used);
        assertTrue(log.get(0).contains("model-tp00-of01.safetensors") && log.get(0).contains("truncated"), log.toString());
        CheckpointException direct = assertThrows(CheckpointException.class,
                () -> ExportCommand.export(Path.of(c.dir(2)), tmp.resolve("hf2"), -1, log::add));
        assertTrue(direct.getMessage().contains("truncated"), direct.getMessage());
    }
}
