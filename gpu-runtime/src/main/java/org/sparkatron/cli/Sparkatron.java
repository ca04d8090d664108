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
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Fp8Recipe;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.PackedSamples;

/**
 * The single-process subcommands of {@code ./sparkatron} ({@link Main} dispatches here): {@code init},
 * {@code train-local}, {@code score}, {@code bench} and {@code demo-local}. Errors and exit statuses as
 * {@link Cli} says: one line naming the problem, 2 for what the user gave (options, files, configs).
 */
public final class Sparkatron {
    private Sparkatron() {
    }

    private static final String INPUTS = String.join("\n",
            "Token files: one sequence per line, token ids separated by single spaces. Text files: one document per line,",
            "tokenized with --tokenizer or the model's saved tokenizer; prepared: a prepare output directory or a Megatron",
            "prefix. Trained models keep their tokenizer (tokenizer.json or sparkatron_tokenizer.json).");

    /** Each command's usage, printed by {@code --help}. */
    static final Map<String, String> USAGE = Map.of(
            "init", String.join("\n",
                    "usage: ./sparkatron init --config CONFIG.json --seed N --out DIR [--tokenizer gpt2|tokenizer.json]",
                    "  writes a freshly initialised model (Hugging Face config.json + model.safetensors) to DIR"),
            "train-local", String.join("\n",
                    "usage: ./sparkatron train-local --model DIR (--tokens FILE | --text FILE [--tokenizer T] | --prepared PATH)",
                    "         --steps N --out DIR [--lr 3e-4] [--min-lr LR/10] [--warmup 0]",
                    "         [--batch 4] [--micro-batches 1] [--seq-len T] [--weight-decay 0.1] [--grad-clip 1.0]",
                    "         [--seed 0] [--threads CORES] [--precision fp32|bf16|fp16|fp8] [--log-interval STEPS/20]",
                    "         [--valid-tokens FILE [--eval-interval STEPS/10] [--eval-iters 10]] [--tensorboard-dir DIR]",
                    "         fp8: [--fp8-format hybrid|e4m3] [--fp8-recipe delayed|tensorwise] [--fp8-margin 0]",
                    "         [--fp8-amax-history-len 1] [--fp8-amax-compute-algo most_recent|max]",
                    "         [--first-last-layers-bf16 [--num-layers-at-start-in-bf16 1] [--num-layers-at-end-in-bf16 1]]",
                    "  trains the model in DIR in this process (no Spark), prints one JSON line per step, saves to --out", INPUTS),
            "score", String.join("\n",
                    "usage: ./sparkatron score --model DIR (--tokens FILE | --text FILE [--tokenizer T] | --prepared PATH) [--threads CORES]",
                    "  prints the mean next-token loss over every sequence as JSON", INPUTS),
            "bench", String.join("\n",
                    "usage: ./sparkatron bench [--steps 5] [--rounds 3] [--threads 2] [--no-peer] [--profile]",
                    "         [--layers 6 --width 384 --heads 6 --seq 256 --vocab 50304 --batch 4]",
                    "  one CPU training step against PyTorch eager on the same model (docs/benchmarks.md);",
                    "  --profile: instead, where the step's time goes by kernel, against the sgemm rate"),
            "demo-local", String.join("\n",
                    "usage: ./sparkatron demo-local [--steps 300] [--threads CORES]",
                    "  trains a small GPT-2 on a generated language in this process, without Spark"));

    public static void main(String[] argv) {
        String cmd = argv.length == 0 ? "" : argv[0];
        Cli.main(cmd, USAGE.getOrDefault(cmd, ""), argv, args -> dispatch(cmd, args, System.out, System.err));
    }

    /** Runs a subcommand ({@code argv[0]}); returns the process exit status ({@link Cli}'s). */
    public static int run(String[] argv, PrintStream out, PrintStream err) {
        String cmd = argv.length == 0 ? "" : argv[0];
        if (!USAGE.containsKey(cmd)) {
            err.println("sparkatron: unknown command '" + cmd + "' (./sparkatron help lists the commands)");
            return Cli.INPUT;
        }
        return Cli.run(cmd, USAGE.get(cmd), argv, out, err, args -> dispatch(cmd, args, out, err));
    }

    private static int dispatch(String cmd, String[] args, PrintStream out, PrintStream err) throws java.io.IOException {
        switch (cmd) {
            case "init" -> init(new Args(cmd, args, 0, Set.of()), out);
            case "train-local" -> TrainLocalCommand.run(new Args(cmd, args, 0, Set.of("first-last-layers-bf16")), out, err);
            case "score" -> {
                return score(new Args(cmd, args, 0, Set.of()), out, err);
            }
            case "bench" -> BenchCommand.run(new Args(cmd, args, 0, Set.of("no-peer", "profile")), out);
            case "demo-local" -> DemoCommand.run(new Args(cmd, args, 0, Set.of()), out);
            default -> throw new Cli.UsageException("unknown command '" + cmd + "' (./sparkatron help lists the commands)");
        }
        return Cli.OK;
    }

    static void setThreads(Args a) {
        Blas.setThreads(a.integer("threads", Runtime.getRuntime().availableProcessors()));
    }

    private static void init(Args a, PrintStream out) throws java.io.IOException {
        Path config = a.path("config");
        long seed = a.requiredInt("seed");
        Path dir = a.path("out");
        String tokenizer = a.string("tokenizer", null);
        a.rejectUnknown();
        Transformer model = new Transformer(ModelConfig.load(config), new CpuDevice());
        model.initialize(seed);
        ModelStore.save(model, dir);
        if (tokenizer != null) {
            Inputs.keepTokenizer(new org.sparkatron.train.SequenceReader.Sequences(List.of(), tokenizer), dir, dir);
        }
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
     * The FP8 options of {@code train-local} (Megatron's flags: {@code --fp8-format}, {@code --fp8-recipe}, ...),
     * or null for other precisions, where giving one is refused.
     */
    static Fp8Recipe fp8Options(Args a, Precision precision) {
        Map<String, String> given = new java.util.LinkedHashMap<>();
        for (String key : Fp8Recipe.KEYS) {
            String v = a.string(key.replace('_', '-'), null);
            if (v != null) {
                given.put(key, v);
            }
        }
        if (precision != Precision.FP8) {
            if (!given.isEmpty()) {
                throw new Args.UsageException("--" + given.keySet().iterator().next().replace('_', '-')
                        + " applies to --precision fp8, not " + precision.label());
            }
            return null;
        }
        try {
            return Fp8Recipe.parse(given::get);
        } catch (IllegalArgumentException e) {
            String m = e.getMessage();
            for (String key : Fp8Recipe.KEYS) {
                m = m.replace(key, "--" + key.replace('_', '-'));
            }
            throw new Args.UsageException(m);
        }
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
    /** Prints the mean loss as JSON; a non-finite loss is printed nowhere and returns {@link Cli#FAILURE}. */
    private static int score(Args a, PrintStream out, PrintStream err) throws java.io.IOException {
        Path modelDir = a.path("model");
        Inputs.Spec inputSpec = Inputs.parse(a);
        setThreads(a);
        a.rejectUnknown();
        Transformer model = ModelStore.load(modelDir, new CpuDevice());
        List<int[]> seqs = inputSpec.read(modelDir, model.config().vocabSize()).sequences();
        String tokens = inputSpec.tokens() != null ? inputSpec.tokens() : "input sequence";
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
            err.println("sparkatron score: the loss over " + tokens + " is " + loss + " (not finite): the model overflows on this input");
            return Cli.FAILURE;
        }
        out.printf(Locale.ROOT, "{\"loss\": %.6f, \"tokens\": %d}%n", loss, count);
        return Cli.OK;
    }

}
