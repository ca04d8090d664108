package org.sparkatron.cli;

import java.io.PrintStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.List;
import java.util.Locale;
import java.util.Optional;

/**
 * The entry point of {@code ./sparkatron}: one table of every command (name, main class, one line of what
 * it does), {@code help} printed from it, and dispatch to the command's {@code main(String[])} in this JVM.
 * The command's main receives the whole argument list (its own name first, which {@link Cli#run} drops)
 * and ends the JVM itself with {@link Cli}'s exit statuses. A new command is one row in {@link #COMMANDS}
 * plus a main that calls {@link Cli#main}. Main classes of the Spark modules are named, not linked: this
 * module does not depend on them, and a JVM without them on its classpath says so for those commands.
 */
public final class Main {
    private Main() {
    }

    /**
     * One command: its name, the class whose {@code main} runs it (null: the {@code ./sparkatron} script runs
     * it without Java), and one line for {@code help}.
     */
    public record Command(String name, String mainClass, String summary) {
    }

    public static final List<Command> COMMANDS = List.of(
            new Command("demo", "org.sparkatron.spark.DemoMain",
                    "the main job: a small GPT-2 learns generated documents through Spark (local[2], dp=2)"),
            new Command("train", "org.sparkatron.spark.TrainMain",
                    "train on Spark from a JSON config (local[world], or --master URL; spark-submit runs the same class)"),
            new Command("prepare", "org.sparkatron.data.spark.PrepareJob",
                    "tokenize text, JSON lines or Parquet into a Megatron indexed dataset (.bin/.idx) with Spark"),
            new Command("export", "org.sparkatron.checkpoint.ExportCommand",
                    "write one checkpoint step as a Hugging Face model directory (config.json + model.safetensors)"),
            new Command("init", "org.sparkatron.cli.Sparkatron",
                    "write a freshly initialised model from a Hugging Face config.json"),
            new Command("train-local", "org.sparkatron.cli.Sparkatron",
                    "train a model in this process, without Spark, on a token file"),
            new Command("score", "org.sparkatron.cli.Sparkatron",
                    "mean next-token loss of a model on token ids, text, or a prepared dataset"),
            new Command("generate", "org.sparkatron.data.cli.GenerateCommand",
                    "continue a text prompt with a trained model (greedy, or seeded sampling)"),
            new Command("demo-local", "org.sparkatron.cli.Sparkatron",
                    "the demo without Spark: a small GPT-2 learns a generated language in this process"),
            new Command("gpu-info", "org.sparkatron.device.GpuProbe",
                    "which GPU libraries this machine has and the device a rank would use"),
            new Command("gpu-check", null,
                    "on a GPU machine: kernels, CUDA tests and the GPT-2 benchmark in one call (docs/gpu.md; the script runs it)"),
            new Command("bench", "org.sparkatron.cli.Sparkatron",
                    "benchmark: one CPU training step against PyTorch eager"),
            new Command("bench-tp", "org.sparkatron.parallel.TpBench",
                    "benchmark: tensor-parallel step time against one rank"),
            new Command("bench-pp", "org.sparkatron.parallel.PpBench",
                    "benchmark: pipeline schedules' bubble and activation memory against theory"),
            new Command("bench-dp", "org.sparkatron.parallel.DpBench",
                    "benchmark: data-parallel step time with gradient reduction overlap on and off, memory per rank against Megatron's accounting"),
            new Command("bench-cp", "org.sparkatron.parallel.CpBench",
                    "benchmark: context-parallel activations per rank (against 1/cp) and ring against all-gather"),
            new Command("bench-comm", "org.sparkatron.comm.bench.CommBench",
                    "benchmark: collectives' bus bandwidth against PyTorch Gloo"),
            new Command("bench-moe", "org.sparkatron.parallel.MoeBench",
                    "benchmark: all-to-all against PyTorch Gloo; MoE training throughput against a dense model of equal active parameters"),
            new Command("bench-data", "org.sparkatron.data.spark.DataBench",
                    "benchmark: tokenization and prepare throughput against a plain tokenizer loop"),
            new Command("bench-start", "org.sparkatron.spark.StartBench",
                    "benchmark: time from the start of fit to the first training step, against one Spark pass over the data"),
            new Command("bench-ckpt", "org.sparkatron.checkpoint.CheckpointBench",
                    "benchmark: checkpoint save and load time against the training step"),
            new Command("help", Main.class.getName(), "this list; './sparkatron COMMAND --help' for a command's options"));

    public static void main(String[] argv) throws Throwable {
        String name = argv.length == 0 ? "help" : argv[0];
        if (name.equals("help") || name.equals("--help") || name.equals("-h")) {
            if (argv.length > 1 && find(argv[1]).isPresent() && !argv[1].equals("help")) {
                dispatch(find(argv[1]).get(), new String[] {argv[1], "--help"});
                return;
            }
            printHelp(System.out);
            return;
        }
        Optional<Command> cmd = find(name);
        if (cmd.isEmpty()) {
            System.err.println("sparkatron: unknown command '" + name + "' (./sparkatron help lists the commands)");
            System.exit(Cli.INPUT);
            return;
        }
        dispatch(cmd.get(), argv);
    }

    public static Optional<Command> find(String name) {
        return COMMANDS.stream().filter(c -> c.name().equals(name)).findFirst();
    }

    /** The {@code help} text: every command with its line. */
    public static void printHelp(PrintStream out) {
        out.println("usage: ./sparkatron COMMAND [options]      (./sparkatron COMMAND --help for its options)");
        out.println();
        for (Command c : COMMANDS) {
            out.printf(Locale.ROOT, "  %-12s %s%n", c.name(), c.summary());
        }
        out.println();
        out.println("Every command: --help, --verbose (stack traces). Exit status 0 done, 2 a usage or input error, 1 a failure.");
    }

    private static void dispatch(Command c, String[] argv) throws Throwable {
        if (c.mainClass() == null) {
            System.err.println("sparkatron " + c.name() + ": run it with the ./sparkatron script (it needs no Java build)");
            System.exit(Cli.INPUT);
            return;
        }
        Method main;
        try {
            main = Class.forName(c.mainClass()).getMethod("main", String[].class);
        } catch (ClassNotFoundException e) {
            System.err.println("sparkatron " + c.name() + ": needs " + c.mainClass() + " on the classpath (the Spark modules)");
            System.exit(Cli.FAILURE);
            return;
        }
        try {
            main.invoke(null, (Object) argv);
        } catch (InvocationTargetException e) { // mains report their own errors; this is a last resort
            Cli.report(c.name(), e.getCause(), List.of(argv).contains("--verbose"), System.err);
            System.exit(Cli.exitStatus(e.getCause()));
        }
    }
}
