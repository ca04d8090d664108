package org.sparkatron.spark;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.sparkatron.cli.Cli;
import org.sparkatron.data.spark.SparkJvm;
import org.sparkatron.data.spark.SparkOptions;

/**
 * {@code ./sparkatron train --config job.json [--key value ...]}, and the same class through
 * {@code spark-submit --class org.sparkatron.spark.TrainMain sparkatron-spark4_2.13-VERSION.jar --config job.json ...}:
 * reads the input ({@code input}, format {@code input_format}: parquet, json, orc, ... any Spark source),
 * trains, saves to {@code output}. Overrides use the config's keys ({@code --steps 500 --dp 4}).
 *
 * <p>The Spark master: {@code --master URL} when given, else the one spark-submit set
 * ({@code spark.master}), else {@code local[world]} (one thread per rank in this JVM; a note when that is more
 * ranks than cores). Spark settings: {@code --conf spark.key=value} (repeatable) or {@code --spark.key value}.
 * Errors and exit statuses as {@link Cli}: 2 for a refused config or input, 1 for a failed job.
 */
public final class TrainMain {
    static final String USAGE = String.join("\n",
            "usage: ./sparkatron train --config job.json [--key value ...] [--master URL] [--conf spark.key=value ...]",
            "  trains on Spark: reads 'input', runs dp x tp x cp x pp ranks in one barrier stage, saves the model to 'output'.",
            "  --key value     overrides a config key (--steps 500 --dp 4 --output /tmp/run); keys: docs/spark.md",
            "  --master URL    Spark master (spark://host:7077, yarn, k8s://..., local[N]); default: the one spark-submit",
            "                  set, else local[dp x tp x cp x pp] (one thread per rank)",
            "  --conf k=v      a Spark setting (also --spark.key value), e.g. --conf spark.executor.memory=8g",
            "  --verbose       stack traces with errors",
            "Exit status: 0 trained, 2 a refused config or input, 1 a failed job.");

    private TrainMain() {
    }

    public static void main(String[] argv) {
        SparkJvm.quietLogging(argv);
        Cli.main("train", USAGE, argv, TrainMain::train);
    }

    private static int train(String[] args) throws Exception {
        SparkJvm.relaunchIfNeeded(TrainMain.class, args);
        SparkOptions spark = SparkOptions.extract(args);
        TrainConfig cfg = parse(spark.rest());
        SparkSession session = session("sparkatron-train", cfg.world(), spark, System.out);
        try {
            run(session, cfg, System.out);
        } catch (DeterministicFailure e) { // ended at once: a retry would fail the same way; its message, not Spark's
            System.err.println("sparkatron train: failed: " + e.getMessage());
            return Cli.FAILURE;
        } finally {
            session.stop();
        }
        return Cli.OK;
    }

    /** Reads {@code --config FILE} and applies the other {@code --key value} pairs on top. */
    static TrainConfig parse(String[] args) throws java.io.IOException {
        Map<String, String> opts = TrainConfig.parseArgs(args, 0);
        String file = opts.remove("config");
        if (file == null) {
            throw new IllegalArgumentException("--config job.json is required");
        }
        return TrainConfig.load(Path.of(file)).withOverrides(opts);
    }

    /** Reads the input and trains; returns the result. */
    public static DistributedTraining.Result run(SparkSession spark, TrainConfig cfg, PrintStream out) {
        if (cfg.input == null) {
            throw new IllegalArgumentException("config key 'input' (a path readable by Spark) is missing");
        }
        if (cfg.output == null) {
            throw new IllegalArgumentException("config key 'output' (where the model is saved) is missing");
        }
        DistributedTraining.checkNotAnInput(cfg);
        DistributedTraining.Result r = MegatronInput.FORMAT.equals(cfg.inputFormat)
                ? DistributedTraining.runMegatron(spark, cfg, out) : DistributedTraining.run(read(spark, cfg), cfg, out);
        for (String line : r.summary()) {
            out.println("[sparkatron] " + line);
        }
        for (RankReport rr : r.ranks()) {
            out.println("[sparkatron] rank " + rr.describe());
        }
        return r;
    }

    private static Dataset<Row> read(SparkSession spark, TrainConfig cfg) {
        Dataset<Row> df;
        try {
            var reader = spark.read().format(cfg.inputFormat);
            if (cfg.inputSchema != null) {
                reader = reader.schema(cfg.inputSchema);
            }
            df = reader.load(cfg.input);
        } catch (Exception e) { // Spark's AnalysisException (path not found, bad format) is a checked type
            throw new IllegalArgumentException("cannot read input '" + cfg.input + "' as " + cfg.inputFormat + ": " + Cli.rootMessage(e), e);
        }
        return df;
    }

    /**
     * Spark settings the training commands default to unless the user set them: Spark's task reaper, so a
     * rank whose thread will not end after Spark killed it (stuck in native code or a GPU kernel) takes its
     * executor JVM down within a minute and the retried stage gets its slot back (docs/spark.md, frozen
     * ranks). Executors receive them from the driver; they have no effect in local mode.
     */
    static final Map<String, String> DEFAULTS = Map.of(
            "spark.task.reaper.enabled", "true",
            "spark.task.reaper.killTimeout", "60s");

    /** The session spark-submit configured, or local[slots] when no master was given; {@link #DEFAULTS} added. */
    static SparkSession session(String name, int slots) {
        return session(name, slots, SparkOptions.extract(new String[0]), null);
    }

    /**
     * A session on {@code options}' master, else the one spark-submit configured, else {@code local[slots]}
     * (loopback, no UI); {@code options}' Spark settings on top. Notes on {@code console} (may be null) when
     * local mode puts more ranks than cores in this JVM.
     */
    static SparkSession session(String name, int slots, SparkOptions options, PrintStream console) {
        SparkConf conf = new SparkConf();
        SparkSession.Builder b = SparkSession.builder().appName(name);
        DEFAULTS.forEach((k, v) -> { // the user's own setting (spark-submit's or --conf) wins
            if (!conf.contains(k) && !options.settings().containsKey(k)) {
                b.config(k, v);
            }
        });
        String master = options.master() != null ? options.master() : conf.get("spark.master", null);
        if (master == null) {
            master = "local[" + slots + "]";
            b.config("spark.ui.enabled", conf.get("spark.ui.enabled", "false"))
                    .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                    .config("spark.sql.shuffle.partitions", String.valueOf(Math.max(2, slots)));
        }
        b.master(master);
        options.settings().forEach(b::config);
        int cores = Runtime.getRuntime().availableProcessors();
        if (console != null && master.startsWith("local") && slots > cores) {
            console.println("[sparkatron] note: " + slots + " ranks on " + master + " share this machine's " + cores
                    + " cores (one thread per rank): expect slow steps; --master URL runs them on a cluster");
        }
        SparkSession s = b.getOrCreate();
        s.sparkContext().setLogLevel("WARN");
        return s;
    }
}
