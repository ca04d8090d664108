package org.sparkatron.spark;

import java.util.Map;
import org.apache.spark.sql.SparkSession;
import org.sparkatron.data.spark.SparkJvm;

/**
 * {@code ./sparkatron demo [--steps N] [--docs N] [--out DIR]}: the main job on local[2] (unless a master is
 * given with {@code spark.master}), two data-parallel CPU ranks, a generated dataset. Exits 1 when the
 * model did not learn.
 */
public final class DemoMain {
    private DemoMain() {
    }

    public static void main(String[] args) throws Exception {
        SparkJvm.quietLogging();
        SparkJvm.relaunchIfNeeded(DemoMain.class, args);
        if (args.length > 0 && args[0].equals("demo")) {
            args = java.util.Arrays.copyOfRange(args, 1, args.length);
        }
        Map<String, String> opts = TrainConfig.parseArgs(args, 0);
        int steps = Integer.parseInt(opts.getOrDefault("steps", "300"));
        int docs = Integer.parseInt(opts.getOrDefault("docs", "4000"));
        String out = opts.getOrDefault("out", "build-out/demo");
        SparkSession spark = TrainMain.session("sparkatron-demo", 2);
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
        System.exit(learned ? 0 : 1);
    }
}
