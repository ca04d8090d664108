package org.sparkatron.checkpoint;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;

/**
 * {@code ./sparkatron export --checkpoint DIR --out MODEL_DIR [--step N]}: writes the weights of a
 * distributed checkpoint (saved under any layout) as a Hugging Face model directory ({@code config.json}
 * + {@code model.safetensors}, see {@link ModelStore}) that {@code transformers}, {@code --init-from} and
 * {@code train-local --model} read. {@code DIR} is a checkpoint root (its newest usable checkpoint is
 * taken, falling back past damaged ones with a message) or one {@code step-N} directory. Local paths.
 * Prints one JSON line; exit status 2 with the problem on stderr for bad input.
 */
public final class ExportCommand {
    private ExportCommand() {
    }

    static final String USAGE = "usage: ./sparkatron export --checkpoint DIR --out MODEL_DIR [--step N]\n"
            + "  writes one checkpoint (the step directory DIR, step N of the checkpoint root DIR, or its newest usable one)\n"
            + "  as a Hugging Face model directory: config.json + model.safetensors";

    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("export", USAGE, argv, args -> {
            run(args, System.out);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    /** Parses the arguments (after the subcommand) and exports. */
    public static void run(String[] argv, PrintStream out) throws IOException {
        Map<String, String> a = new LinkedHashMap<>();
        int from = argv.length > 0 && argv[0].equals("export") ? 1 : 0;
        for (int i = from; i < argv.length; i++) {
            String k = argv[i];
            if (!k.startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("usage: export --checkpoint DIR --out MODEL_DIR [--step N]; bad argument '" + k + "'");
            }
            if (!List.of("--checkpoint", "--out", "--step").contains(k)) {
                throw new IllegalArgumentException("unknown option " + k + " (known: --checkpoint, --out, --step)");
            }
            if (a.containsKey(k.substring(2))) {
                throw new IllegalArgumentException("option " + k + " is given twice");
            }
            a.put(k.substring(2), argv[++i]);
        }
        if (!a.containsKey("checkpoint") || !a.containsKey("out")) {
            throw new IllegalArgumentException("usage: export --checkpoint DIR --out MODEL_DIR [--step N]");
        }
        long step = -1; // the newest usable checkpoint
        if (a.containsKey("step")) {
            try {
                step = Long.parseLong(a.get("step"));
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("--step must be a step number, got '" + a.get("step") + "'");
            }
            if (step < 0) {
                throw new IllegalArgumentException("--step must be >= 0, got " + step + " (leave --step out for the newest checkpoint)");
            }
        }
        Path checkpoint = Paths.get(a.get("checkpoint"));
        Path target = Paths.get(a.get("out"));
        if (checkpoint.toAbsolutePath().normalize().equals(target.toAbsolutePath().normalize())) {
            throw new IllegalArgumentException("--out " + target + " is the checkpoint directory itself: give another directory");
        }
        String dir = export(checkpoint, target, step, msg -> System.err.println("sparkatron export: " + msg));
        out.printf(Locale.ROOT, "{\"checkpoint\": \"%s\", \"out\": \"%s\"}%n", dir, a.get("out"));
    }

    /**
     * Exports one checkpoint as a model directory; returns the checkpoint directory used.
     *
     * @param step the step to export, or -1 for {@code checkpoint} itself when it is a step directory, else the newest usable
     */
    public static String export(Path checkpoint, Path out, long step, java.util.function.Consumer<String> log) throws IOException {
        LocalStorage fs = new LocalStorage();
        String name = checkpoint.getFileName() == null ? "" : checkpoint.getFileName().toString();
        boolean stepDir = name.startsWith(DistributedCheckpoint.PREFIX) || fs.exists(checkpoint.resolve(CheckpointMetadata.FILE).toString());
        DistributedCheckpoint root = new DistributedCheckpoint(fs, stepDir ? String.valueOf(checkpoint.toAbsolutePath().getParent())
                : checkpoint.toString(), 1);
        List<String> candidates = new java.util.ArrayList<>();
        if (step >= 0) {
            candidates.add(root.dir(step));
        } else if (stepDir) {
            candidates.add(checkpoint.toString());
        } else {
            for (long s : root.committedSteps()) {
                candidates.add(root.dir(s));
            }
            if (candidates.isEmpty()) {
                throw new IllegalArgumentException(checkpoint + ": no checkpoint here (no " + DistributedCheckpoint.PREFIX
                        + "N directory and no " + CheckpointMetadata.FILE + ")");
            }
        }
        CheckpointException last = null;
        for (String dir : candidates) {
            try {
                CheckpointMetadata meta = root.metadata(dir);
                Transformer model = new Transformer(meta.config(), new CpuDevice());
                root.load(dir, model, null);
                ModelStore.save(model, out);
                return dir;
            } catch (CheckpointException e) {
                if (!e.fallbackAllowed() || candidates.size() == 1) {
                    throw e;
                }
                last = e;
                log.accept(e.getMessage() + "; trying the previous checkpoint");
            }
        }
        throw new CheckpointException(checkpoint + ": no usable checkpoint (last problem: " + last.getMessage() + ")", last, false);
    }
}
