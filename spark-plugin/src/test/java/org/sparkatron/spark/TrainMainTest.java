package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** {@code ./sparkatron train}: a JSON config plus command-line overrides, Parquet in, model out. */
class TrainMainTest {
    @TempDir
    Path tmp;

    @Test
    @Timeout(120)
    void configFileWithOverridesTrainsFromJsonLines() throws Exception {
        // JSON lines with a DDL schema (Spark would infer array<bigint>). Written without Spark: Spark's own
        // file writers are not Kryo-registration-clean, and the shared session requires registration.
        Path data = tmp.resolve("data.jsonl");
        writeJsonLines(data, SyntheticData.walks(200, 4));
        ObjectNode c = TrainConfig.JSON.createObjectNode();
        c.set("model", SharedSpark.tinyModel());
        c.put("dp", 2).put("global_batch", 4).put("seq_len", 16).put("steps", 50).put("input", data.toString()).put("input_format", "json")
                .put("input_schema", "tokens array<int>")
                .put("output", tmp.resolve("out").toString());
        Path file = tmp.resolve("job.json");
        Files.writeString(file, c.toString());

        TrainConfig cfg = TrainMain.parse(new String[] {"--config", file.toString(), "--steps", "3", "--lr", "0.002"});
        assertEquals(3, cfg.steps);
        assertEquals(0.002, cfg.lr);
        DistributedTraining.Result r = TrainMain.run(SharedSpark.get(), cfg, System.out);
        assertEquals(3, r.metrics().size());
        assertTrue(Files.isRegularFile(tmp.resolve("out/model.safetensors")));
        assertTrue(Files.isRegularFile(tmp.resolve("out/config.json")));
        assertEquals(3, Files.readAllLines(tmp.resolve("out/metrics.jsonl")).size());

        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> TrainMain.parse(new String[] {"--steps", "3"}));
        assertTrue(e.getMessage().contains("--config job.json is required"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> TrainMain.parse(new String[] {"--config", file.toString(), "--steps"}));
        assertTrue(e.getMessage().contains("option --steps needs a value"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> TrainMain.run(SharedSpark.get(), cfg.with("input", tmp.resolve("nope").toString()), System.out));
        assertTrue(e.getMessage().contains("cannot read input"), e.getMessage());
    }

    static void writeJsonLines(Path file, java.util.List<int[]> docs) throws java.io.IOException {
        StringBuilder sb = new StringBuilder();
        for (int[] d : docs) {
            sb.append("{\"tokens\": ").append(java.util.Arrays.toString(d)).append("}\n");
        }
        Files.writeString(file, sb.toString());
    }
}
