package org.sparkatron.spark;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.sparkatron.data.spark.SparkJvm;

/**
 * {@code ./sparkatron train --config job.json [--key value ...]}, and the same class through
 * {@code spark-submit --class org.sparkatron.spark.TrainMain app.jar --config job.json ...}: reads the input
 * ({@code input}, format {@code input_format}: parquet, json, orc, ... any Spark source), trains, saves
 * to {@code output}. Overrides use the config's keys ({@code --steps 500 --dp 4}). Without a master from
 * spark-submit or {@code spark.master}, runs on {@code local[world]}. Exit code 2 for a refused input.
 */
public final class TrainMain {
    private TrainMain() {
    }

    public static void main(String[] args) throws Exception {
        SparkJvm.quietLogging();
        SparkJvm.relaunchIfNeeded(TrainMain.class, args);
        if (args.length > 0 && args[0].equals("train")) {
            args = java.util.Arrays.copyOfRange(args, 1, args.length);
        }
        TrainConfig cfg;
        try {
            cfg = parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("sparkatron train: " + e.getMessage());
            System.err.println("usage: ./sparkatron train --config job.json [--key value ...]   (keys: see docs/spark.md)");
            System.exit(2);
            return;
        }
        SparkSession spark = session("sparkatron-train", cfg.world());
        int code = 0;
        try {
            run(spark, cfg, System.out);
        } catch (IllegalArgumentException e) {
            System.err.println("sparkatron train: refused: " + e.getMessage());
            code = 2;
        } catch (DeterministicFailure e) { // ended at once: a retry would fail the same way
            System.err.println("sparkatron train: failed: " + e.getMessage());
            code = 1;
        } finally {
            spark.stop();
        }
        System.exit(code);
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
            throw new IllegalArgumentException("cannot read input '" + cfg.input + "' as " + cfg.inputFormat + ": " + e.getMessage(), e);
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
        SparkConf conf = new SparkConf();
        SparkSession.Builder b = SparkSession.builder().appName(name);
        DEFAULTS.forEach((k, v) -> {
            if (!conf.contains(k)) {
                b.config(k, v);
            }
        });
        if (!conf.contains("spark.master")) {
            b.master("local[" + slots + "]").config("spark.ui.enabled", conf.get("spark.ui.enabled", "false"))
                    .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                    .config("spark.sql.shuffle.partitions", String.valueOf(Math.max(2, slots)));
        }
        SparkSession s = b.getOrCreate();
        s.sparkContext().setLogLevel("WARN");
        return s;
    }
}
