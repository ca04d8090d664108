package org.sparkatron.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.DeviceMemoryException;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.precision.Precision;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.TokenFile;

/**
 * Entry point of {@code ./sparkatron} for the single-process subcommands: {@code init}, {@code train-local},
 * {@code score}, {@code bench} and {@code demo-local}. Errors in what the user gave (options, files, configs)
 * print one line naming the problem and exit with status 2; anything else is a bug and prints a trace.
 */
public final class Sparkatron {
    private Sparkatron() {
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron <command> [options]",
            "  init        --config CONFIG.json --seed N --out DIR",
            "  train-local --model DIR --tokens FILE --steps N --out DIR [--lr 3e-4] [--min-lr LR/10] [--warmup 0]",
            "              [--batch 4] [--micro-batches 1] [--seq-len T] [--weight-decay 0.1] [--grad-clip 1.0]",
            "              [--seed 0] [--threads CORES] [--precision fp32|bf16|fp16] [--log-interval STEPS/20]",
            "              [--valid-tokens FILE [--eval-interval STEPS/10] [--eval-iters 10]] [--tensorboard-dir DIR]",
            "  score       --model DIR --tokens FILE [--threads CORES]",
            "  bench       [--steps 5] [--rounds 3] [--threads 2] [--no-peer] [--layers 6 --width 384 --heads 6 --seq 256 --vocab 50304 --batch 4]",
            "  demo-local  [--steps 300] [--threads CORES]   (trains a small GPT-2 on generated data, one process)",
            "Token files: one sequence per line, token ids separated by single spaces.");

    public static void main(String[] argv) {
        System.exit(run(argv, System.out, System.err));
    }

    /** Runs a subcommand; returns the process exit status. */
    public static int run(String[] argv, PrintStream out, PrintStream err) {
        String cmd = argv.length == 0 ? "help" : argv[0];
        try {
            switch (cmd) {
                case "init" -> init(new Args(cmd, argv, 1, Set.of()), out);
                case "train-local" -> TrainLocalCommand.run(new Args(cmd, argv, 1, Set.of()), out, err);
                case "score" -> score(new Args(cmd, argv, 1, Set.of()), out);
                case "bench" -> BenchCommand.run(new Args(cmd, argv, 1, Set.of("no-peer")), out);
                case "demo", "demo-local" -> DemoCommand.run(new Args(cmd, argv, 1, Set.of()), out);
                case "help", "--help", "-h" -> out.println(USAGE);
                default -> {
                    err.println("sparkatron: unknown command '" + cmd + "'\n" + USAGE);
                    return 2;
                }
            }
            return 0;
        } catch (Args.UsageException | IllegalArgumentException | DeviceMemoryException e) {
            err.println("sparkatron " + cmd + ": " + e.getMessage());
            return 2;
        } catch (Failure e) {
            err.println("sparkatron " + cmd + ": " + e.getMessage());
            return 1;
        } catch (java.io.IOException e) {
            err.println("sparkatron " + cmd + ": " + e);
            return 2;
        }
    }

    static void setThreads(Args a) {
        Blas.setThreads(a.integer("threads", Runtime.getRuntime().availableProcessors()));
    }

    private static void init(Args a, PrintStream out) throws java.io.IOException {
        Path config = a.path("config");
        long seed = a.requiredInt("seed");
        Path dir = a.path("out");
        a.rejectUnknown();
        Transformer model = new Transformer(ModelConfig.load(config), new CpuDevice());
        model.initialize(seed);
        ModelStore.save(model, dir);
        out.printf(Locale.ROOT, "{\"model\": \"%s\", \"family\": \"%s\", \"parameters\": %d, \"seed\": %d}%n",
                dir, model.config().family().name().toLowerCase(Locale.ROOT), savedParameters(model), seed);
    }

    /** Parameters as saved, without the vocabulary padding rows. */
    static long savedParameters(Transformer model) {
        long n = 0;
        for (var p : model.params().params()) {
            boolean vocabRows = p.name().equals("embed") || p.name().equals("head");
            n += vocabRows ? p.numel() / p.shape()[0] * model.config().vocabSize() : p.numel();
        }
        return n;
    }

    /**
     * Refuses an output directory that is the input model's: the input would be replaced by the result
     * (and lost if the run fails half-way through the save).
     */
    static void refuseOverwritingInput(Path out, Path input, String inputOption) throws java.io.IOException {
        boolean same = out.toAbsolutePath().normalize().equals(input.toAbsolutePath().normalize())
                || (java.nio.file.Files.exists(out) && java.nio.file.Files.exists(input) && java.nio.file.Files.isSameFile(out, input));
        if (same) {
            throw new IllegalArgumentException("--out " + out + " is the " + inputOption + " directory: the input model would be "
                    + "overwritten; give another --out");
        }
    }

    /** A failure that is not the user's input (e.g. a non-finite result): one line, exit status 1. */
    static final class Failure extends RuntimeException {
        Failure(String message) {
            super(message);
        }
    }

    /**
     * Lines of equal length are samples as they are (T = length - 1); otherwise (or with --seq-len) all
     * lines are packed Megatron-style into samples of T + 1 tokens, T defaulting to the model's positions.
     */
    static PackedSamples samples(List<int[]> seqs, int seqLen, ModelConfig cfg, long seed) {
        int first = seqs.get(0).length;
        boolean equal = seqs.stream().allMatch(s -> s.length == first);
        if (equal && (seqLen < 0 || seqLen == first - 1)) {
            if (first - 1 > cfg.maxPositions()) {
                throw new IllegalArgumentException("sequences of " + first + " tokens exceed the model's "
                        + cfg.maxPositions() + " positions (+1 target); pass --seq-len to pack them");
            }
            return PackedSamples.perSequence(seqs, seed);
        }
        int t = seqLen < 0 ? cfg.maxPositions() : seqLen;
        if (t > cfg.maxPositions()) {
            throw new IllegalArgumentException("--seq-len " + t + " exceeds the model's " + cfg.maxPositions() + " positions");
        }
        return PackedSamples.packed(seqs, t, seed);
    }

    /** Mean next-token cross-entropy over every line, each line scored on its own (grouped by length). */
    private static void score(Args a, PrintStream out) throws java.io.IOException {
        Path modelDir = a.path("model");
        Path tokens = a.path("tokens");
        setThreads(a);
        a.rejectUnknown();
        Transformer model = ModelStore.load(modelDir, new CpuDevice());
        List<int[]> seqs = TokenFile.read(tokens, model.config().vocabSize());
        Map<Integer, List<int[]>> byLength = new TreeMap<>();
        for (int i = 0; i < seqs.size(); i++) {
            int[] s = seqs.get(i);
            if (s.length < 2) {
                throw new IllegalArgumentException(tokens + ":" + (i + 1) + ": a sequence needs at least 2 tokens to score");
            }
            if (s.length - 1 > model.config().maxPositions()) {
                throw new IllegalArgumentException(tokens + ":" + (i + 1) + ": " + s.length + " tokens exceed the model's "
                        + model.config().maxPositions() + " positions + 1");
            }
            byLength.computeIfAbsent(s.length, k -> new ArrayList<>()).add(s);
        }
        double sum = 0;
        long count = 0;
        int maxBatchTokens = 8192;
        for (Map.Entry<Integer, List<int[]>> e : byLength.entrySet()) {
            int len = e.getKey();
            int t = len - 1;
            List<int[]> group = e.getValue();
            int perBatch = Math.max(1, maxBatchTokens / len);
            for (int from = 0; from < group.size(); from += perBatch) {
                int b = Math.min(perBatch, group.size() - from);
                int[] batch = new int[b * len];
                for (int i = 0; i < b; i++) {
                    System.arraycopy(group.get(from + i), 0, batch, i * len, len);
                }
                sum += model.loss(batch, b, t, null) * b * t;
                count += (long) b * t;
            }
        }
        double loss = sum / count;
        if (!Double.isFinite(loss)) { // JSON has no NaN: never print it as a result
            throw new Failure("the loss over " + tokens + " is " + loss + " (not finite): the model overflows on this input");
        }
        out.printf(Locale.ROOT, "{\"loss\": %.6f, \"tokens\": %d}%n", loss, count);
    }

}
