package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.data.tokenizer.Gpt2Tokenizer;
import org.sparkatron.data.tokenizer.HfTokenizer;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;

/**
 * GPT-2 (jtokkit) against ids published for GPT-2's vocabulary, and a Hugging Face tokenizer.json (DJL)
 * against ids computed by the independent BPE in data-loaders/scripts/make_tiny_tokenizer.py.
 */
@Timeout(60)
class TokenizerTest {
    static final String[] TEXTS = {"Hello world", " leading space and trailing ", "Zürich, 日本語, emoji 🎉\n\ttabs",
        "text with <|endoftext|> inside", ""};

    @Test
    void gpt2KnownIdsAndRoundTrip() throws Exception {
        TextTokenizer t = TokenizerSpec.gpt2().create();
        // "Hello world" is [15496, 995] in GPT-2's vocabulary (as tiktoken and HF's gpt2 both give).
        assertArrayEquals(new int[] {15496, 995}, t.encode("Hello world"));
        assertArrayEquals(new int[] {15496, 995, 50256}, t.encodeDocument("Hello world"));
        assertEquals(50256, t.eodId());
        assertEquals(50257, t.vocabSize());
        assertArrayEquals(new int[0], t.encodeDocument(""), "an empty document has no end-of-document (Megatron's preprocess_data)");
        TextTokenizer legacy = TokenizerSpec.parse("gpt2-legacy", null, Map.of()).create();
        for (String s : TEXTS) {
            int[] ids = t.encode(s);
            int specials = 0;
            for (int id : ids) {
                assertTrue(id >= 0 && id <= Gpt2Tokenizer.EOD, "id " + id);
                specials += id == Gpt2Tokenizer.EOD ? 1 : 0;
            }
            // Megatron Core's GPT2BPETokenizer (Hugging Face's GPT2Tokenizer): the literal is the special token.
            assertEquals(s.split(java.util.regex.Pattern.quote(Gpt2Tokenizer.END_OF_TEXT), -1).length - 1, specials, s);
            assertEquals(s, t.decode(ids));
            // --legacy-tokenizer: ordinary text, never the end-of-text id.
            int[] legacyIds = legacy.encode(s);
            for (int id : legacyIds) {
                assertTrue(id >= 0 && id < Gpt2Tokenizer.EOD, "legacy: ordinary text never yields the end-of-text id: " + id);
            }
            assertEquals(s, legacy.decode(legacyIds));
        }
    }

    static Path resource(String name) throws Exception {
        return Paths.get(TokenizerTest.class.getResource("/tokenizer/" + name).toURI());
    }

    @Test
    void huggingFaceTokenizerJsonMatchesTheReferenceBpe() throws Exception {
        JsonNode expected = new ObjectMapper().readTree(resource("tiny_bpe_expected.json").toFile());
        TokenizerSpec spec = TokenizerSpec.parse(resource("tiny_bpe_tokenizer.json").toString(), null, Map.of());
        try (TextTokenizer t = spec.create()) {
            assertEquals(expected.get("eod").asInt(), t.eodId());
            assertEquals(expected.get("vocab_size").asInt(), t.vocabSize());
            for (JsonNode c : expected.get("cases")) {
                String text = c.get("text").asText();
                int[] ids = MegatronGoldenTest.ints(c.get("ids"));
                assertArrayEquals(ids, t.encode(text), text);
                assertEquals(text, t.decode(ids), "round trip of " + text);
            }
            for (String s : TEXTS) {
                assertEquals(s.replace("<|endoftext|>", ""), t.decode(t.encode(s)).replace("<|endoftext|>", ""));
            }
            // Longer than DJL's default 512-token truncation: must come back whole.
            String longText = "unseen words ".repeat(400);
            int[] ids = t.encode(longText);
            assertTrue(ids.length > 512, "no truncation: " + ids.length);
            assertEquals(longText, t.decode(ids));
        }
    }

    @Test
    void badTokenizerFilesAreRefusedClearly() throws Exception {
        Exception e = assertThrows(Exception.class, () -> TokenizerSpec.parse("/no/such/tokenizer.json", null, Map.of()));
        assertTrue(e.getMessage().contains("/no/such/tokenizer.json"), e.getMessage());
        IllegalArgumentException bad = assertThrows(IllegalArgumentException.class, () -> new HfTokenizer("{not json", null, false));
        assertTrue(bad.getMessage().contains("not valid JSON"), bad.getMessage());
        String json = Files.readString(resource("tiny_bpe_tokenizer.json")).replace("<|endoftext|>", "<|something|>");
        IllegalArgumentException noEod = assertThrows(IllegalArgumentException.class, () -> new HfTokenizer(json, null, false));
        assertTrue(noEod.getMessage().contains("end-of-document"), noEod.getMessage());
        try (HfTokenizer t = new HfTokenizer(json, 7, false)) {
            assertEquals(7, t.eodId());
        }
    }
}
