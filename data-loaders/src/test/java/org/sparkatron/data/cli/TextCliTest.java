package org.sparkatron.data.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.cli.Sparkatron;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDatasetWriter;
import org.sparkatron.data.tokenizer.ModelTokenizer;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;

/**
 * Text in and text out on the command line, through the real entry points: init with a tokenizer, train-local
 * and score on a text file (the tokenizer saved with the model), score on prepared (Megatron indexed) data equal
 * to score on the same ids, and generate, seeded and deterministic.
 */
@Timeout(300)
class TextCliTest {
    static final String TOKENIZER = "src/test/resources/tokenizer/tiny_bpe_tokenizer.json";

    @TempDir
    Path tmp;

    record Out(int rc, String out, String err) {
    }

    static Out sparkatron(String... argv) {
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int rc = Sparkatron.run(argv, new PrintStream(o, true, StandardCharsets.UTF_8), new PrintStream(e, true, StandardCharsets.UTF_8));
        return new Out(rc, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
    }

    static Out generate(String... argv) {
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int rc = GenerateCommand.run(argv, new PrintStream(o, true, StandardCharsets.UTF_8), new PrintStream(e, true, StandardCharsets.UTF_8));
        return new Out(rc, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
    }

    static double loss(Out o) throws Exception {
        assertEquals(0, o.rc(), o.err());
        return new ObjectMapper().readTree(o.out()).get("loss").asDouble();
    }

    @Test
    void textInTextOut() throws Exception {
        Path config = tmp.resolve("config.json");
        Files.writeString(config, "{\"model_type\":\"gpt2\",\"n_layer\":1,\"n_embd\":32,\"n_head\":2,\"n_positions\":32,\"vocab_size\":320}");
        Path m0 = tmp.resolve("m0");
        Out init = sparkatron("init", "--config", config.toString(), "--seed", "1", "--out", m0.toString(), "--tokenizer", TOKENIZER);
        assertEquals(0, init.rc(), init.err());
        assertTrue(Files.isRegularFile(m0.resolve(ModelTokenizer.HF_FILE)), "init saved the tokenizer");

        List<String> lines = new ArrayList<>();
        for (int i = 0; i < 40; i++) {
            lines.add("the cat sat on the mat");
            lines.add("the dog sat on the log");
        }
        Path text = tmp.resolve("train.txt");
        Files.write(text, lines);
        Path m1 = tmp.resolve("m1");
        Out train = sparkatron("train-local", "--model", m0.toString(), "--text", text.toString(), "--steps", "30", "--lr", "1e-2",
                "--batch", "4", "--seq-len", "16", "--threads", "1", "--out", m1.toString());
        assertEquals(0, train.rc(), train.err());
        assertEquals(Files.readString(Path.of(TOKENIZER)), Files.readString(m1.resolve(ModelTokenizer.HF_FILE)),
                "the trained model keeps its tokenizer");
        double before = loss(sparkatron("score", "--model", m0.toString(), "--text", text.toString(), "--threads", "1"));
        double after = loss(sparkatron("score", "--model", m1.toString(), "--text", text.toString(), "--threads", "1"));
        // two sentences repeated: after 30 steps the model predicts most tokens; ln 320 = 5.8 nats is chance
        assertTrue(after < before - 2.0, before + " -> " + after);

        // prepared (Megatron indexed) data and a token file of the same ids score the same
        Path ids = tmp.resolve("ids.txt");
        String prefix = tmp.resolve("prepared_text_document").toString();
        try (TextTokenizer tok = TokenizerSpec.parse(TOKENIZER, null, java.util.Map.of()).create();
             IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.UINT16)) {
            List<String> idLines = new ArrayList<>();
            for (String l : lines.subList(0, 6)) {
                int[] d = tok.encodeDocument(l);
                w.addDocument(d);
                idLines.add(java.util.Arrays.stream(d).mapToObj(Integer::toString).collect(Collectors.joining(" ")));
            }
            Files.write(ids, idLines);
        }
        double fromIds = loss(sparkatron("score", "--model", m1.toString(), "--tokens", ids.toString(), "--threads", "1"));
        double fromPrepared = loss(sparkatron("score", "--model", m1.toString(), "--prepared", prefix, "--threads", "1"));
        assertEquals(fromIds, fromPrepared, 0.0, "same ids, same loss");

        Out g1 = generate("generate", "--model", m1.toString(), "--prompt", "the cat", "--max-tokens", "8", "--threads", "1");
        assertEquals(0, g1.rc(), g1.err());
        assertTrue(g1.out().startsWith(" sat on the"), "greedy continuation of a memorised sentence: " + g1.out());
        String[] hot = {"--model", m1.toString(), "--prompt", "the", "--max-tokens", "12", "--temperature", "1.5", "--top-k", "50",
            "--top-p", "0.95", "--seed", "7", "--threads", "1"};
        assertEquals(generate(hot).out(), generate(hot).out(), "seeded sampling prints the same text");

        Out noTokenizer = sparkatron("score", "--model", tmp.resolve("none").toString(), "--text", text.toString());
        assertEquals(2, noTokenizer.rc());
        Out both = sparkatron("score", "--model", m1.toString(), "--text", text.toString(), "--tokens", ids.toString());
        assertEquals(2, both.rc());
        assertTrue(both.err().contains("give exactly one input"), both.err());
        Out bare = generate("--model", m0.getParent().resolve("nope").toString(), "--prompt", "x");
        assertEquals(2, bare.rc());
        assertTrue(bare.err().contains("not a model directory"), bare.err());
        Out badTemp = generate("--model", m1.toString(), "--prompt", "x", "--temperature", "-1");
        assertTrue(badTemp.rc() == 2 && badTemp.err().contains("temperature"), badTemp.err());
        assertFalse(Files.exists(tmp.resolve("none")));
    }
}
