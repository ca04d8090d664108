package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Issue 22, finding 5, for {@code ./sparkatron train} configs (no Spark needed): every value has its
 * type (a string for a boolean or a number is refused, not coerced), a key given twice in the file or on
 * the command line is refused, the world size is computed in 64 bits, and the model object is read as
 * strictly as {@code init} reads a config.json. A number given on the command line for a string key is
 * the string ({@code --output 2024} is a directory name).
 */
class ConfigValuesTest {
    @TempDir
    Path tmp;

    private static String refusal(String key, String value) {
        return assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with(key, value),
                () -> key + "=" + value + " was accepted").getMessage();
    }

    @Test
    void megatronsNamesAreOneKeyWithOursAndMayNotDisagree() {
        TrainConfig c = SharedSpark.config(2, 4, 2).with("expert_parallel", "2").with("model",
                ExpertParallelSparkTest.mixtral().toString());
        assertEquals(2, c.ep);
        c = SharedSpark.config(1, 4, 2).with("recompute", "\"FULL\"").with("recompute_granularity", "\"full\"");
        assertEquals(org.sparkatron.model.Recompute.FULL, c.recompute);
        String m = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("recompute", "\"full\"")
                .with("recompute_granularity", "\"selective\"")).getMessage();
        assertEquals("config keys 'recompute' (\"full\") and 'recompute_granularity' (\"selective\") disagree: give one of them", m);
        m = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(2, 4, 2).with("ep", "2")
                .with("expert_parallel", "1")).getMessage();
        assertEquals("config keys 'ep' (2) and 'expert_parallel' (1) disagree: give one of them", m);
    }

    @Test
    void stringsWhereBooleansOrNumbersBelongAreRefused() {
        String m = refusal("drop_bad_rows", "yes");
        assertTrue(m.contains("'drop_bad_rows' must be true or false") && m.contains("yes"), m);
        m = refusal("start_over", "sure");
        assertTrue(m.contains("'start_over' must be true or false"), m);
        m = refusal("start_over", "1");
        assertTrue(m.contains("'start_over' must be true or false, got 1"), m);
        m = refusal("fail_rank", "\"0\"");
        assertTrue(m.contains("'fail_rank' must be an integer"), m);
        m = refusal("lr", "1e400");
        assertTrue(m.contains("'lr' must be a finite number"), m);
        m = refusal("model", "42");
        assertTrue(m.contains("'model' must be a config.json object or a path"), m);
        m = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("input_col",
                TrainConfig.JSON.createObjectNode().put("a", 1))).getMessage();
        assertTrue(m.contains("'input_col' must be a string"), m);
        // a number on the command line for a string key is that string
        assertEquals("2024", SharedSpark.config(1, 4, 2).withOverrides(java.util.Map.of("output", "2024")).output);
        assertEquals(true, SharedSpark.config(1, 4, 2).with("start_over", "true").startOver);
    }

    @Test
    void sizesAreCheckedIn64BitsBeforeAnyProduct() {
        // 2 x (2^31 - 1) overflowed int into a negative world that passed the 4096 limit
        String m = refusal("tp", String.valueOf(Integer.MAX_VALUE));
        assertTrue(m.contains("larger than 4096") || m.contains("tp"), m);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> SharedSpark.config(2, 4, 2).with("tp", String.valueOf(Integer.MAX_VALUE)));
        assertTrue(e.getMessage().contains("2 x 2147483647 x 1 = 4294967294 is larger than 4096"), e.getMessage());
        m = refusal("steps", "4294967296");
        assertTrue(m.contains("'steps' must be an integer"), m);
    }

    @Test
    void duplicateAndUnknownKeysAreRefusedInTheFileTheModelAndTheCommandLine() throws Exception {
        Path file = tmp.resolve("job.json");
        String body = SharedSpark.config(1, 4, 2).toString();
        Files.writeString(file, body.substring(0, body.length() - 1) + ", \"steps\": 9}");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> TrainMain.parse(new String[] {"--config", file.toString()}));
        assertTrue(e.getMessage().contains(file.toString()) && e.getMessage().contains("duplicate key 'steps'"), e.getMessage());

        Files.writeString(file, body);
        e = assertThrows(IllegalArgumentException.class,
                () -> TrainMain.parse(new String[] {"--config", file.toString(), "--steps", "3", "--steps", "4"}));
        assertTrue(e.getMessage().contains("--steps is given twice"), e.getMessage());

        var model = SharedSpark.tinyModel().put("n_layers", 3);
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("model", model));
        assertTrue(e.getMessage().contains("unknown key 'n_layers'") && e.getMessage().contains("did you mean 'n_layer'"), e.getMessage());
        var eps = SharedSpark.tinyModel().put("layer_norm_epsilon", "x");
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("model", eps));
        assertTrue(e.getMessage().contains("'layer_norm_epsilon'"), e.getMessage());

        Path modelFile = tmp.resolve("model.json");
        Files.writeString(modelFile, "{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_layer\": 3, \"n_embd\": 32, \"n_head\": 2, "
                + "\"n_positions\": 32, \"vocab_size\": 64}");
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("model", modelFile.toString()));
        assertTrue(e.getMessage().contains(modelFile.toString()) && e.getMessage().contains("duplicate key 'n_layer'"), e.getMessage());
    }
}
