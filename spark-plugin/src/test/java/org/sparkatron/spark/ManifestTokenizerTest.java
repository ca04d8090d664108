package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Training on a prepare output keeps the tokenizer its manifest names, when that tokenizer can be read. */
class ManifestTokenizerTest {
    @TempDir
    Path tmp;

    private TrainConfig config(Path input, String tokenizer) throws Exception {
        Files.createDirectories(input);
        Files.writeString(input.resolve("manifest.json"), "{\"format\":\"megatron-indexed-dataset\",\"tokenizer\":\"" + tokenizer
                + "\",\"vocab_size\":50257,\"eod\":50256,\"dtype\":\"uint16\",\"shards\":[]}");
        ObjectNode c = SharedSpark.config(1, 4, 1).toJson();
        c.put("input", input.toString()).put("input_format", "megatron");
        return TrainConfig.fromJson(c);
    }

    @Test
    void theManifestsTokenizerGoesWithTheModel() throws Exception {
        assertEquals("gpt2", MegatronInput.withManifestTokenizer(config(tmp.resolve("a"), "gpt2"), Map.of()).tokenizer);
        assertNull(MegatronInput.withManifestTokenizer(config(tmp.resolve("b"), "/gone/tokenizer.json"), Map.of()).tokenizer,
                "an unreadable tokenizer is not adopted (training goes on without it)");
        TrainConfig given = config(tmp.resolve("c"), "gpt2").with("tokenizer", "gpt2-legacy");
        assertEquals("gpt2-legacy", MegatronInput.withManifestTokenizer(given, Map.of()).tokenizer, "the config's own wins");
    }
}
