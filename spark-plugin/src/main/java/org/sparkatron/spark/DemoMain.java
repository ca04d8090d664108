package org.sparkatron.spark;

import java.util.Map;
import org.apache.spark.sql.SparkSession;
import org.sparkatron.cli.Cli;
import org.sparkatron.data.spark.SparkJvm;
import org.sparkatron.data.spark.SparkOptions;

/**
 * {@code ./sparkatron demo [--steps N] [--docs N] [--out DIR] [--master URL]}: the main job on local[2] (unless a
 * master is given, or set by spark-submit), two data-parallel CPU ranks, a generated dataset. Exits 1 when the
 * model did not learn.
 */
public final class DemoMain {
    static final String USAGE = String.join("\n",
            "usage: ./sparkatron demo [--steps 300] [--docs 4000] [--out build-out/demo] [--master local[2]] [--conf spark.key=value ...]",
            "  trains a small GPT-2 (2 layers, width 64) through the whole Spark path on generated documents, dp=2,",
            "  then scores held-out documents and continues a prompt. Exit status 1 when it did not learn.");

    private DemoMain() {
    }

    public static void main(String[] argv) {
        SparkJvm.quietLogging(argv);
        Cli.main("demo", USAGE, argv, DemoMain::demo);
    }

    private static int demo(String[] argv) throws Exception {
        SparkJvm.relaunchIfNeeded(DemoMain.class, argv);
        SparkOptions sparkOptions = SparkOptions.extract(argv);
        Map<String, String> opts = TrainConfig.parseArgs(sparkOptions.rest(), 0);
        for (String k : opts.keySet()) {
            if (!java.util.List.of("steps", "docs", "out").contains(k)) {
                throw new Cli.UsageException("unknown option --" + k + " (./sparkatron demo --help)");
            }
        }
        int steps = positive(opts, "steps", 300);
        int docs = positive(opts, "docs", 4000);
        String out = opts.getOrDefault("out", "build-out/demo");
        if (sparkOptions.master() == null || sparkOptions.master().startsWith("local")) {
            // the ranks run in this JVM: the JIT compiles their training path while Spark starts (JitWarmup)
            TrainConfig demo = Demo.config(steps, out);
            org.sparkatron.train.JitWarmup.start(demo.model(), demo.seqLen);
        }
        SparkSession spark = TrainMain.session("sparkatron-demo", 2, sparkOptions, System.out);
        boolean learned;
        try {
            System.out.println("[sparkatron] demo: GPT-2 (2 layers, width 64) on " + docs
                    + " generated documents (walks under 4 secret permutations), dp=2 on " + spark.sparkContext().master());
            Demo.Outcome o = Demo.run(spark, Demo.config(steps, new java.io.File(out).getAbsolutePath()), docs, System.out);
            learned = Demo.report(o, System.out);
            System.out.println("model, metrics.jsonl and ranks.json saved in " + new java.io.File(out).getAbsolutePath());
        } finally {
            spark.stop();
        }
        return learned ? Cli.OK : Cli.FAILURE;
    }

    private static int positive(Map<String, String> opts, String key, int dflt) {
        String v = opts.get(key);
        if (v == null) {
            return dflt;
        }
        try {
            int n = Integer.parseInt(v);
            if (n >= 1) {
                return n;
            }
        } catch (NumberFormatException e) {
            // falls through to the message below
        }
        throw new Cli.UsageException("--" + key + " must be a positive integer, got '" + v + "'");
    }
}
