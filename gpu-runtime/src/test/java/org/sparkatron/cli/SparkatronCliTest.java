package org.sparkatron.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The single-process subcommands run as a user runs them: init, train-local, score, and their errors. */
class SparkatronCliTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    record Result(int status, String out, String err) {
        List<String> lines() {
            return List.of(out.strip().split("\n"));
        }
    }

    static Result run(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int status = Sparkatron.run(args, new PrintStream(out, true, StandardCharsets.UTF_8), new PrintStream(err, true, StandardCharsets.UTF_8));
        return new Result(status, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    private static Path writeConfig(Path dir) throws Exception {
        Path cfg = dir.resolve("tiny.json");
        Files.writeString(cfg, "{\"model_type\": \"llama\", \"num_hidden_layers\": 2, \"hidden_size\": 32, "
                + "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"intermediate_size\": 48, \"vocab_size\": 40, "
                + "\"max_position_embeddings\": 16}");
        return cfg;
    }

    /** A repetitive corpus the model can learn in a few steps: counting modulo 40 from random starts. */
    private static Path writeTokens(Path dir, int lines) throws Exception {
        SplittableRandom rng = new SplittableRandom(5);
        List<String> out = new ArrayList<>();
        for (int l = 0; l < lines; l++) {
            int start = rng.nextInt(40);
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < 17; i++) {
                sb.append(i == 0 ? "" : " ").append((start + i) % 40);
            }
            out.add(sb.toString());
        }
        Path f = dir.resolve("tokens.txt");
        Files.write(f, out);
        return f;
    }

    @Test
    void trainLocalLogsIntervalsAndEvaluatesTheValidationFile(@TempDir Path dir) throws Exception {
        Path cfg = writeConfig(dir);
        Path tokens = writeTokens(dir, 64);
        Path valid = dir.resolve("valid.txt");
        Files.write(valid, Files.readAllLines(tokens).subList(0, 16));
        assertEquals(0, run("init", "--config", cfg.toString(), "--seed", "7", "--out", dir.resolve("m0").toString()).status());
        Result train = run("train-local", "--model", dir.resolve("m0").toString(), "--tokens", tokens.toString(), "--steps", "12",
                "--lr", "1e-2", "--batch", "4", "--threads", "1", "--out", dir.resolve("m1").toString(), "--log-interval", "4",
                "--valid-tokens", valid.toString(), "--eval-interval", "6", "--eval-iters", "2", "--tensorboard-dir", dir.resolve("tb").toString());
        assertEquals(0, train.status(), train.err());
        List<String> out = train.lines();
        assertEquals(14, out.size(), "12 steps and 2 evaluations: " + out);
        JsonNode eval = JSON.readTree(out.get(13));
        assertEquals("eval", eval.get("kind").asText());
        assertEquals(12, eval.get("step").asInt());
        assertEquals(8, eval.get("eval_samples").asInt(), "2 batches of 4");
        assertEquals(out, Files.readAllLines(dir.resolve("m1/metrics.jsonl")));
        List<String> err = List.of(train.err().split("\n"));
        assertEquals(3, err.stream().filter(l -> l.matches("\\[sparkatron\\] step +\\d+/12 \\| loss [0-9.]+ \\| grad norm .* \\| MFU .* \\| ETA .*")).count(),
                train.err());
        assertEquals(2, err.stream().filter(l -> l.startsWith("[sparkatron] validation at step")).count(), train.err());
        assertTrue(err.get(err.size() - 1).startsWith("[sparkatron] done: training loss (mean of a log interval)"), train.err());
        assertTrue(Files.readString(dir.resolve("m1/loss.svg")).contains("data-series=\"valid\" data-points=\"2\""));
        try (var files = Files.list(dir.resolve("tb"))) {
            assertEquals(1, files.filter(f -> f.getFileName().toString().startsWith("events.out.tfevents.")).count());
        }
    }

    @Test
    void initTrainScoreAsAUserWould(@TempDir Path dir) throws Exception {
        Path cfg = writeConfig(dir);
        Path tokens = writeTokens(dir, 64);
        Result init = run("init", "--config", cfg.toString(), "--seed", "7", "--out", dir.resolve("m0").toString());
        assertEquals(0, init.status(), init.err());
        assertTrue(Files.exists(dir.resolve("m0/config.json")) && Files.exists(dir.resolve("m0/model.safetensors")));

        Result before = run("score", "--model", dir.resolve("m0").toString(), "--tokens", tokens.toString(), "--threads", "1");
        assertEquals(0, before.status(), before.err());
        JsonNode b = JSON.readTree(before.lines().get(before.lines().size() - 1));
        assertEquals(64 * 16, b.get("tokens").asInt());
        assertEquals(Math.log(40), b.get("loss").asDouble(), 0.3, "a fresh model is near uniform");

        Result train = run("train-local", "--model", dir.resolve("m0").toString(), "--tokens", tokens.toString(), "--steps", "30",
                "--lr", "1e-2", "--warmup", "3", "--batch", "8", "--threads", "1", "--out", dir.resolve("m1").toString());
        assertEquals(0, train.status(), train.err());
        List<String> steps = train.lines();
        assertEquals(30, steps.size());
        JsonNode first = JSON.readTree(steps.get(0));
        JsonNode last = JSON.readTree(steps.get(29));
        for (String key : new String[] {"step", "loss", "lr", "grad_norm", "tokens_per_s"}) {
            assertTrue(last.has(key), "step line has " + key + ": " + last);
        }
        assertEquals(30, last.get("step").asInt());
        assertTrue(last.get("loss").asDouble() < first.get("loss").asDouble() - 1, "loss falls: " + first + " -> " + last);

        Result after = run("score", "--model", dir.resolve("m1").toString(), "--tokens", tokens.toString());
        JsonNode a = JSON.readTree(after.lines().get(after.lines().size() - 1));
        assertTrue(a.get("loss").asDouble() < b.get("loss").asDouble() - 1, "trained model scores better: " + a + " vs " + b);
    }

    @Test
    void sameSeedAndDataGiveBitwiseIdenticalLosses(@TempDir Path dir) throws Exception {
        Path cfg = writeConfig(dir);
        Path tokens = writeTokens(dir, 32);
        run("init", "--config", cfg.toString(), "--seed", "3", "--out", dir.resolve("m").toString());
        String[] args = {"train-local", "--model", dir.resolve("m").toString(), "--tokens", tokens.toString(), "--steps", "4",
            "--batch", "4", "--seed", "11", "--threads", "2", "--out", dir.resolve("o").toString()};
        List<Double> a = losses(run(args));
        List<Double> b = losses(run(args));
        assertEquals(a, b, "two runs with the same seed and data");
        args[args.length - 5] = "12"; // another data-order seed
        assertTrue(!a.equals(losses(run(args))), "a different seed changes the data order");
    }

    private static List<Double> losses(Result r) throws Exception {
        assertEquals(0, r.status(), r.err());
        List<Double> l = new ArrayList<>();
        for (String line : r.lines()) {
            l.add(JSON.readTree(line).get("loss").asDouble());
        }
        return l;
    }

    @Test
    void userMistakesGiveOneLineErrorsAndStatus2(@TempDir Path dir) throws Exception {
        Path cfg = writeConfig(dir);
        run("init", "--config", cfg.toString(), "--seed", "1", "--out", dir.resolve("m").toString());
        Path bad = dir.resolve("bad.txt");
        Files.writeString(bad, "1 2 3\n4 x 6\n");
        Result r = run("score", "--model", dir.resolve("m").toString(), "--tokens", bad.toString());
        assertEquals(2, r.status());
        assertTrue(r.err().contains("bad.txt:2:3: 'x' is not a token id"), r.err());

        Files.writeString(bad, "1 2 3\n4 40 6\n");
        r = run("score", "--model", dir.resolve("m").toString(), "--tokens", bad.toString());
        assertTrue(r.status() == 2 && r.err().contains("bad.txt:2:3: token id 40 is outside the vocabulary of 40"), r.err());

        r = run("train-local", "--model", dir.resolve("m").toString(), "--steps", "1", "--out", dir.resolve("o").toString());
        assertTrue(r.status() == 2 && r.err().contains("give exactly one input: --tokens FILE"), r.err());

        r = run("init", "--config", cfg.toString(), "--seed", "1", "--out", dir.resolve("x").toString(), "--sede", "2");
        assertTrue(r.status() == 2 && r.err().contains("unknown option --sede"), r.err());

        r = run("score", "--model", dir.resolve("nowhere").toString(), "--tokens", bad.toString());
        assertTrue(r.status() == 2 && r.err().contains("config.json is missing"), r.err());

        Files.writeString(cfg, "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_embd\": 30, \"n_head\": 4, \"n_positions\": 8, \"vocab_size\": 9}");
        r = run("init", "--config", cfg.toString(), "--seed", "1", "--out", dir.resolve("y").toString());
        assertTrue(r.status() == 2 && r.err().contains("hidden size 30 is not divisible by the number of attention heads 4"), r.err());

        r = run("frobnicate");
        assertTrue(r.status() == 2 && r.err().contains("unknown command 'frobnicate'"), r.err());
    }
}
