package org.sparkatron.bench;

import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.TreeSet;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.train.SampleSource;

/**
 * The small harness the {@code bench-*} commands share: {@code --key value} options checked against the
 * command's known keys (flags take no value; mistakes are {@code Cli.UsageException}s, which the command line
 * prints as one line with exit status 2), a median, synthetic samples and the benchmark model shapes.
 * Kept apart from the library's code paths. Immutable after parsing.
 */
public final class BenchArgs {
    private final String command;
    private final Map<String, String> values = new HashMap<>();

    /**
     * @param known the command's value options; {@code flags} its options without a value. The command name
     *              itself may come first (as {@code ./sparkatron} passes it).
     */
    public BenchArgs(String command, String[] args, Set<String> known, Set<String> flags) {
        this.command = command;
        int i = args.length > 0 && args[0].equals(command) ? 1 : 0;
        for (; i < args.length; i++) {
            if (!args[i].startsWith("--")) {
                throw new org.sparkatron.cli.Cli.UsageException("expected --option, got '" + args[i] + "'");
            }
            String k = args[i].substring(2);
            if (flags.contains(k)) {
                values.put(k, "true");
            } else if (!known.contains(k)) {
                Set<String> all = new TreeSet<>(known);
                all.addAll(flags);
                throw new org.sparkatron.cli.Cli.UsageException("unknown option --" + k + " (known: --" + String.join(" --", all) + ")");
            } else if (i + 1 < args.length) {
                values.put(k, args[++i]);
            } else {
                throw new org.sparkatron.cli.Cli.UsageException("option --" + k + " needs a value");
            }
        }
    }

    public int integer(String key, int dflt) {
        String v = values.get(key);
        try {
            return v == null ? dflt : Integer.parseInt(v);
        } catch (NumberFormatException e) {
            throw new org.sparkatron.cli.Cli.UsageException("--" + key + " must be an integer, got '" + v + "'");
        }
    }

    /** A comma-separated list of integers, e.g. {@code --pp 2,4}. */
    public int[] integers(String key, int... dflt) {
        String v = values.get(key);
        if (v == null) {
            return dflt;
        }
        try {
            return Arrays.stream(v.split(",")).mapToInt(s -> Integer.parseInt(s.trim())).toArray();
        } catch (NumberFormatException e) {
            throw new org.sparkatron.cli.Cli.UsageException("--" + key + " must be integers separated by commas, got '" + v + "'");
        }
    }

    public String string(String key, String dflt) {
        return values.getOrDefault(key, dflt);
    }

    public boolean flag(String key) {
        return values.containsKey(key);
    }

    public static double median(double[] v) {
        double[] s = v.clone();
        Arrays.sort(s);
        return s.length % 2 == 1 ? s[s.length / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    }

    /** A GPT-2 (MHA, F = 4C, tied) or Llama (SwiGLU, untied) model of the given shape. */
    public static ModelConfig model(String family, int layers, int width, int heads, int seq, int vocab) {
        return family.equals("llama")
                ? new ModelConfig(ModelConfig.Family.LLAMA, layers, width, heads, heads, 8 * width / 3 / 64 * 64, vocab, seq,
                        1e-5f, 10000, false, ModelConfig.DEFAULT_VOCAB_MULTIPLE)
                : new ModelConfig(ModelConfig.Family.GPT2, layers, width, heads, heads, 4 * width, vocab, seq, 1e-5f, 0, true,
                        ModelConfig.DEFAULT_VOCAB_MULTIPLE);
    }

    /** Endless random samples of {@code seq + 1} ids, the same for every seed-0 source. */
    public static SampleSource randomSamples(ModelConfig cfg, int seq) {
        return new SampleSource() {
            private final SplittableRandom rng = new SplittableRandom(0);
            private long n;

            @Override
            public int sampleLength() {
                return seq + 1;
            }

            @Override
            public boolean next(int[] out, int offset) {
                for (int i = 0; i <= seq; i++) {
                    out[offset + i] = rng.nextInt(cfg.vocabSize());
                }
                n++;
                return true;
            }

            @Override
            public long consumed() {
                return n;
            }
        };
    }
}
