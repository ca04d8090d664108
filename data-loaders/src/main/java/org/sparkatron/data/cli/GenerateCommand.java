package org.sparkatron.data.cli;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.cli.Cli;
import org.sparkatron.data.tokenizer.ModelTokenizer;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.inference.Generator;
import org.sparkatron.inference.Sampling;
import org.sparkatron.model.Transformer;

/**
 * {@code ./sparkatron generate --model DIR --prompt TEXT}: text in, text out with a trained model directory
 * (Hugging Face layout) and the tokenizer saved with it (or {@code --tokenizer}). Prints the continuation.
 * Greedy by default; {@code --temperature}, {@code --top-k}, {@code --top-p} sample, seeded by {@code --seed},
 * so the same command prints the same text. Stops at {@code --max-tokens} or the end-of-document token.
 * User errors print one line and exit 2 ({@link Cli}).
 */
public final class GenerateCommand {
    static final String USAGE = "usage: ./sparkatron generate --model DIR --prompt TEXT [--max-tokens 64] [--temperature 0] "
            + "[--top-k 0] [--top-p 1] [--seed 0] [--tokenizer gpt2|tokenizer.json] [--threads N]";
    private static final Set<String> OPTIONS = Set.of("model", "prompt", "max-tokens", "temperature", "top-k", "top-p", "seed",
            "tokenizer", "threads");

    private GenerateCommand() {
    }

    public static void main(String[] argv) {
        System.exit(run(argv, System.out, System.err));
    }

    /** Runs the command; returns the exit status ({@link Cli}'s: 2 for the user's errors). */
    public static int run(String[] argv, PrintStream out, PrintStream err) {
        return Cli.run("generate", USAGE, argv, out, err, args -> generate(args, out));
    }

    private static int generate(String[] argv, PrintStream out) throws IOException {
        Map<String, String> o = parse(argv);
        Path model = Path.of(required(o, "model"));
        String prompt = required(o, "prompt");
        int maxTokens = integer(o, "max-tokens", 64);
        Sampling sampling = new Sampling(number(o, "temperature", 0), integer(o, "top-k", 0), number(o, "top-p", 1));
        long seed = integer(o, "seed", 0);
        Blas.setThreads(integer(o, "threads", Runtime.getRuntime().availableProcessors()));
        if (!Files.isRegularFile(model.resolve(ModelStore.CONFIG))) {
            throw new IllegalArgumentException(model + " is not a model directory (no " + ModelStore.CONFIG + ")");
        }
        String tokenizer = o.containsKey("tokenizer") ? o.get("tokenizer") : ModelTokenizer.find(model.toString(), Map.of());
        if (tokenizer == null) {
            throw new IllegalArgumentException(model + " has no saved tokenizer: give --tokenizer gpt2 or a tokenizer.json path");
        }
        Transformer t = ModelStore.load(model, new CpuDevice());
        try (TextTokenizer tok = TokenizerSpec.parse(tokenizer, null, Map.of()).create()) {
            int[] ids = tok.encode(prompt);
            if (ids.length == 0) {
                throw new IllegalArgumentException("--prompt is empty");
            }
            int[] gen = Generator.generate(t, ids, maxTokens, sampling, seed, tok.eodId());
            out.println(tok.decode(gen));
        }
        return Cli.OK;
    }

    private static Map<String, String> parse(String[] argv) {
        Map<String, String> o = new LinkedHashMap<>();
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (!a.startsWith("--") || !OPTIONS.contains(a.substring(2))) {
                throw new IllegalArgumentException("unknown argument '" + a + "'\n" + USAGE);
            }
            if (i + 1 >= argv.length) {
                throw new IllegalArgumentException("option " + a + " needs a value");
            }
            o.put(a.substring(2), argv[++i]);
        }
        return o;
    }

    private static String required(Map<String, String> o, String k) {
        String v = o.get(k);
        if (v == null) {
            throw new IllegalArgumentException("missing required option --" + k + "\n" + USAGE);
        }
        return v;
    }

    private static int integer(Map<String, String> o, String k, int dflt) {
        try {
            return o.containsKey(k) ? Integer.parseInt(o.get(k)) : dflt;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--" + k + " must be an integer, got '" + o.get(k) + "'");
        }
    }

    private static double number(Map<String, String> o, String k, double dflt) {
        try {
            return o.containsKey(k) ? Double.parseDouble(o.get(k)) : dflt;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--" + k + " must be a number, got '" + o.get(k) + "'");
        }
    }
}
