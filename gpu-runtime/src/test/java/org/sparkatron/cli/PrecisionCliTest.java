package org.sparkatron.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;

/** {@code train-local --precision}: bf16 and fp16 train from the command line and save fp32 master weights. */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class PrecisionCliTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    private static Path setup(Path dir) throws Exception {
        Path cfg = dir.resolve("tiny.json");
        Files.writeString(cfg, "{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_embd\": 32, \"n_head\": 4, \"n_positions\": 16,"
                + " \"vocab_size\": 40}");
        List<String> lines = new ArrayList<>();
        for (int l = 0; l < 64; l++) {
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < 17; i++) {
                sb.append(i == 0 ? "" : " ").append((l * 7 + i) % 40); // counting: learnable in a few steps
            }
            lines.add(sb.toString());
        }
        Files.write(dir.resolve("tokens.txt"), lines);
        assertEquals(0, SparkatronCliTest.run("init", "--config", cfg.toString(), "--seed", "7", "--out", dir.resolve("m0").toString()).status());
        return dir.resolve("tokens.txt");
    }

    @Test
    void bf16AndFp16TrainFromTheCommandLine(@TempDir Path dir) throws Exception {
        Path tokens = setup(dir);
        for (String p : new String[] {"bf16", "fp16"}) {
            Path out = dir.resolve("m-" + p);
            SparkatronCliTest.Result r = SparkatronCliTest.run("train-local", "--model", dir.resolve("m0").toString(), "--tokens",
                    tokens.toString(), "--steps", "25", "--lr", "1e-2", "--batch", "8", "--threads", "1", "--precision", p,
                    "--out", out.toString());
            assertEquals(0, r.status(), r.err());
            List<String> steps = r.lines();
            assertEquals(25, steps.size());
            JsonNode first = JSON.readTree(steps.get(0));
            JsonNode last = JSON.readTree(steps.get(24));
            assertTrue(last.get("loss").asDouble() < first.get("loss").asDouble() - 1, p + ": loss falls: " + first + " -> " + last);
            assertEquals(p.equals("fp16"), last.has("loss_scale"), p + ": loss scale reported only under fp16: " + last);
            // the saved model holds the fp32 master weights, not their 16-bit rounding
            Transformer saved = ModelStore.load(out, TestDevices.create());
            float[] w = TestDevices.read(saved.device(), saved.params().weights());
            Precision prec = Precision.parse(p);
            boolean beyond16 = false;
            for (int i = 0; i < w.length && !beyond16; i++) {
                beyond16 = prec.round(w[i]) != w[i];
            }
            assertTrue(beyond16, p + ": saved weights carry fp32 precision");
        }
    }

    @Test
    void unknownPrecisionIsRefused(@TempDir Path dir) throws Exception {
        Path tokens = setup(dir);
        SparkatronCliTest.Result r = SparkatronCliTest.run("train-local", "--model", dir.resolve("m0").toString(), "--tokens",
                tokens.toString(), "--steps", "1", "--precision", "fp4", "--out", dir.resolve("o").toString());
        assertEquals(2, r.status());
        assertTrue(r.err().contains("precision must be fp32, bf16, fp16 or fp8, got 'fp4'"), r.err());
    }

    @Test
    void fp8TrainsFromTheCommandLineWithMegatronsOptions(@TempDir Path dir) throws Exception {
        Path tokens = setup(dir);
        SparkatronCliTest.Result r = SparkatronCliTest.run("train-local", "--model", dir.resolve("m0").toString(), "--tokens",
                tokens.toString(), "--steps", "25", "--lr", "1e-2", "--batch", "8", "--threads", "1", "--precision", "fp8",
                "--fp8-format", "e4m3", "--fp8-recipe", "delayed", "--fp8-amax-history-len", "8", "--fp8-amax-compute-algo", "max",
                "--fp8-margin", "1", "--first-last-layers-bf16", "--num-layers-at-end-in-bf16", "0", "--out",
                dir.resolve("m-fp8").toString());
        assertEquals(0, r.status(), r.err());
        List<String> steps = r.lines();
        assertEquals(25, steps.size());
        JsonNode first = JSON.readTree(steps.get(0));
        JsonNode last = JSON.readTree(steps.get(24));
        assertTrue(last.get("loss").asDouble() < first.get("loss").asDouble() - 1, "fp8: loss falls: " + first + " -> " + last);
    }

    @Test
    void fp8OptionsAreRefusedWhereTheyDoNotApplyOrAreWrong(@TempDir Path dir) throws Exception {
        Path tokens = setup(dir);
        SparkatronCliTest.Result r = SparkatronCliTest.run("train-local", "--model", dir.resolve("m0").toString(), "--tokens",
                tokens.toString(), "--steps", "1", "--precision", "bf16", "--fp8-format", "e4m3", "--out", dir.resolve("o").toString());
        assertEquals(2, r.status());
        assertTrue(r.err().contains("sparkatron train-local: --fp8-format applies to --precision fp8, not bf16"), r.err());
        assertFalse(r.err().contains("train-local: train-local"), "the command named once: " + r.err());
        r = SparkatronCliTest.run("train-local", "--model", dir.resolve("m0").toString(), "--tokens", tokens.toString(), "--steps",
                "1", "--precision", "fp8", "--fp8-amax-compute-algo", "mean", "--out", dir.resolve("o").toString());
        assertEquals(2, r.status());
        assertTrue(r.err().contains("train-local: --fp8-amax-compute-algo must be one of max, most_recent, got 'mean'"), r.err());
    }
}
