package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.cli.Main;

/**
 * {@code ./sparkatron} as a user runs it: each command in its own JVM through {@link Main} (the class the
 * script runs), with the script's JVM options. Every command in the table answers {@code --help} with its
 * usage; user errors print exactly one line naming the problem and exit 2; {@code --verbose} adds the trace.
 */
@Timeout(300)
class CommandLineTest {
    @TempDir
    Path tmp;

    record Run(int status, String out, String err) {
        /** stderr without the JVM's incubator-module notice and Spark's start-up warnings. */
        List<String> errLines() {
            List<String> l = new ArrayList<>();
            for (String s : err.split("\n")) {
                if (!s.isBlank() && !s.contains("Using incubator modules") && !s.matches("\\d\\d:\\d\\d:\\d\\d WARN .*")) {
                    l.add(s);
                }
            }
            return l;
        }
    }

    static Run sparkatron(Path dir, String... args) throws Exception {
        List<String> cmd = new ArrayList<>();
        cmd.add(System.getProperty("java.home") + "/bin/java");
        cmd.add("-Xmx512m");
        cmd.addAll(StandaloneCluster.jvmOptions());
        cmd.addAll(StandaloneCluster.LIGHT_JVM); // short runs: start-up is the cost
        cmd.add("-cp");
        cmd.add(String.join(File.pathSeparator, StandaloneCluster.classpath()));
        cmd.add(Main.class.getName());
        cmd.addAll(List.of(args));
        Path out = dir.resolve("out.txt");
        Path err = dir.resolve("err.txt");
        Process p = new ProcessBuilder(cmd).directory(dir.toFile()).redirectOutput(out.toFile()).redirectError(err.toFile()).start();
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "sparkatron " + String.join(" ", args) + " did not finish");
        return new Run(p.exitValue(), Files.readString(out), Files.readString(err));
    }

    @Test
    void helpListsEveryCommandAndEveryCommandAnswersHelp() throws Exception {
        Run help = sparkatron(tmp, "help");
        assertEquals(0, help.status(), help.err());
        for (Main.Command c : Main.COMMANDS) {
            assertTrue(help.out().lines().anyMatch(l -> l.startsWith("  " + c.name() + " ") && l.length() > 20),
                    c.name() + " listed with its line: " + help.out());
            if (c.name().equals("help") || c.mainClass() == null) { // the script runs gpu-check without Java
                continue;
            }
            Run r = sparkatron(tmp, c.name(), "--help");
            assertEquals(0, r.status(), c.name() + " --help: " + r.err());
            assertTrue(r.out().startsWith("usage: ./sparkatron " + c.name()), c.name() + " --help: " + r.out());
            assertTrue(r.errLines().isEmpty(), c.name() + " --help wrote to stderr: " + r.err());
        }
        Run unknown = sparkatron(tmp, "frobnicate");
        assertEquals(2, unknown.status());
        assertEquals(List.of("sparkatron: unknown command 'frobnicate' (./sparkatron help lists the commands)"), unknown.errLines());
    }

    @Test
    void userErrorsAreOneLineWithStatus2AndTracesOnlyWithVerbose() throws Exception {
        Run gpu = sparkatron(tmp, "gpu-info");
        assertEquals(0, gpu.status(), gpu.err());
        assertTrue(gpu.out().contains("device: "), gpu.out());

        assertOneLine(sparkatron(tmp, "train", "--config", "nope.json"), "sparkatron train: no such file or directory: nope.json");
        assertOneLine(sparkatron(tmp, "train", "--steps", "3"), "sparkatron train: --config job.json is required");
        assertOneLine(sparkatron(tmp, "train", "--config", "x.json", "--conf", "executor.memory"),
                "sparkatron train: --conf takes spark.key=value, got 'executor.memory'");
        assertOneLine(sparkatron(tmp, "demo", "--steps", "many"), "sparkatron demo: --steps must be a positive integer, got 'many'");
        assertOneLine(sparkatron(tmp, "bench-tp", "--tpp", "2"), "sparkatron bench-tp: unknown option --tpp");
        assertOneLine(sparkatron(tmp, "gpu-info", "--all"), "sparkatron gpu-info: gpu-info takes no options, got --all");

        Files.writeString(tmp.resolve("c.json"), "{\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_embd\": 32, \"n_head\": 4, "
                + "\"n_positions\": 16, \"vocab_size\": 50}");
        assertEquals(0, sparkatron(tmp, "init", "--config", "c.json", "--seed", "1", "--out", "m").status());
        assertOneLine(sparkatron(tmp, "score", "--model", "m", "--tokens", "nope.txt"), "sparkatron score: no such file or directory: nope.txt");
        assertOneLine(sparkatron(tmp, "score", "--model", "m", "--tokens", "m"), "sparkatron score: m is a directory, not a token file");
        Files.write(tmp.resolve("bin.txt"), new byte[] {'1', ' ', (byte) 0xC3, (byte) 0x28, '\n'});
        assertOneLine(sparkatron(tmp, "score", "--model", "m", "--tokens", "bin.txt"),
                "sparkatron score: bin.txt is not UTF-8 text (a token file is lines of token ids)");
        assertOneLine(sparkatron(tmp, "train-local", "--model", "nope", "--tokens", "bin.txt", "--steps", "1", "--out", "o"),
                "sparkatron train-local: nope is not a model directory: config.json is missing");

        Run verbose = sparkatron(tmp, "score", "--model", "m", "--tokens", "nope.txt", "--verbose");
        assertEquals(2, verbose.status());
        assertTrue(verbose.err().contains("java.nio.file.NoSuchFileException: nope.txt") && verbose.err().contains("\tat org.sparkatron"),
                "--verbose prints the trace: " + verbose.err());
    }

    /** A missing Spark input: refused by Spark's own check, one line, status 2 (starts a local Spark). */
    @Test
    void aMissingSparkInputIsOneLine() throws Exception {
        Run r = sparkatron(tmp, "prepare", "--input", "nope", "--format", "text", "--tokenizer", "gpt2", "--output", "p");
        assertOneLine(r, "sparkatron prepare: [PATH_NOT_FOUND] Path does not exist: file:" + tmp.resolve("nope") + ". SQLSTATE: 42K03");
        assertFalse(Files.exists(tmp.resolve("p")), "nothing written");
    }

    /** {@code train} runs on the master it is given, with the Spark settings given: here one too small for dp=2. */
    @Test
    void trainTakesAMasterAndSparkSettings() throws Exception {
        Path data = tmp.resolve("data.jsonl");
        TrainMainTest.writeJsonLines(data, SyntheticData.walks(20, 3));
        Path job = tmp.resolve("job.json");
        Files.writeString(job, "{\"model\": " + SharedSpark.tinyModel() + ", \"dp\": 2, \"global_batch\": 4, \"seq_len\": 16, "
                + "\"steps\": 2, \"input\": \"" + data + "\", \"input_format\": \"json\", \"input_schema\": \"tokens array<int>\", "
                + "\"output\": \"" + tmp.resolve("out") + "\"}");
        Run r = sparkatron(tmp, "train", "--config", job.toString(), "--master", "local[1]", "--conf", "spark.sparkatron.slotWaitSeconds=1",
                "--spark.ui.enabled", "false");
        assertOneLine(r, "sparkatron train: the job needs 2 concurrent task slots (one per rank) but the cluster offers 1 (master local[1]");

        // a model too large for the JVM the ranks share: refused on the driver with the estimate's numbers
        Files.writeString(job, Files.readString(job).replace("\"model\": " + SharedSpark.tinyModel(), "\"model\": {\"model_type\": "
                + "\"gpt2\", \"n_layer\": 48, \"n_embd\": 1600, \"n_head\": 25, \"n_positions\": 1024, \"vocab_size\": 50257}"));
        r = sparkatron(tmp, "train", "--config", job.toString());
        assertOneLine(r, "sparkatron train: the job does not fit in memory: each rank needs ");
        assertTrue(r.errLines().get(0).contains("To fit: "), r.err());
    }

    /** Status 2 and exactly one line on stderr, starting with {@code line}. */
    private static void assertOneLine(Run r, String line) {
        assertEquals(2, r.status(), r.err());
        assertEquals(1, r.errLines().size(), r.err());
        assertTrue(r.errLines().get(0).startsWith(line), r.err());
    }
}
