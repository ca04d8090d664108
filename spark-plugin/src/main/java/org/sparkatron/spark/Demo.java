package org.sparkatron.spark;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.PrintStream;
import java.util.List;
import java.util.Locale;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.functions;
import org.sparkatron.model.Transformer;

/**
 * The demo job: trains a small GPT-2 with two data-parallel ranks on a generated task (walks under four
 * secret permutations, {@link SyntheticData}) through the whole Spark path -- DataFrame, validation,
 * shuffle, barrier stage, DP all-reduce, live progress, HF save -- then scores held-out documents with the
 * model Transformer (loss, perplexity), measures next-token accuracy on them (chance: 1/64), and
 * continues a prompt. Learning is judged on held-out data the model never saw.
 */
public final class Demo {
    /** What the demo measured. Accuracy counts positions 2+ of held-out documents (determined by the first two). */
    public record Outcome(double firstLoss, double lastLoss, double heldOutLoss, double heldOutAccuracy, int[] prompt,
                          int[] continuation, DistributedTraining.Result training) {
    }

    public static final int VOCAB = SyntheticData.VOCAB;

    private Demo() {
    }

    /** The demo's model: GPT-2 family, 2 layers, width 64, 4 heads, 64 positions, 64-token vocabulary. */
    public static ObjectNode modelConfig() {
        ObjectNode m = TrainConfig.JSON.createObjectNode();
        m.put("model_type", "gpt2").put("n_layer", 2).put("n_embd", 64).put("n_head", 4).put("n_positions", 64)
                .put("vocab_size", VOCAB);
        return m;
    }

    /** The demo's training config: dp=2, global batch 16 of 32-token samples, AdamW with warm-up and cosine decay. */
    public static TrainConfig config(int steps, String output) {
        ObjectNode c = TrainConfig.JSON.createObjectNode();
        c.set("model", modelConfig());
        c.put("dp", 2).put("global_batch", 16).put("seq_len", 32).put("steps", steps).put("lr", 1e-2).put("min_lr", 1e-3)
                .put("warmup_steps", Math.max(1, steps / 10)).put("weight_decay", 0.0).put("seed", 42).put("input_col", "tokens")
                .put("data_split", "95,5,0").put("eval_iters", 4); // validation on 5% of the documents, every steps/10

        if (output != null) {
            c.put("output", output);
        }
        return TrainConfig.fromJson(c);
    }

    public static Outcome run(SparkSession spark, TrainConfig cfg, int trainDocs, PrintStream out) {
        Dataset<Row> train = SyntheticData.frame(spark, SyntheticData.walks(trainDocs, 1), "tokens", 4);
        List<int[]> heldOut = SyntheticData.walks(200, 2);
        SparkatronEstimator est = new SparkatronEstimator();
        est.setModelConfig(cfg.model().toJson().toString());
        SparkatronModel model = fit(est, cfg, train, out);
        DistributedTraining.Result r = est.lastResult();

        Dataset<Row> scored = model.transform(SyntheticData.frame(spark, heldOut, "tokens", 2));
        double heldOutLoss = scored.agg(functions.avg("loss")).first().getDouble(0);
        Transformer t = model.newTransformer();
        long right = 0;
        long total = 0;
        for (int[] doc : heldOut) {
            float[] logits = t.logits(doc, 1, doc.length - 1);
            for (int j = 2; j < doc.length; j++) {
                int base = (j - 1) * VOCAB;
                int best = 0;
                for (int v = 1; v < VOCAB; v++) {
                    if (logits[base + v] > logits[base + best]) {
                        best = v;
                    }
                }
                right += best == doc[j] ? 1 : 0;
                total++;
            }
        }
        // rule 1's marker, then three steps of its walk from token 7
        int[] prompt = {SyntheticData.VOCAB - SyntheticData.RULES + 1, 7, SyntheticData.next(1, 7),
                SyntheticData.next(1, SyntheticData.next(1, 7))};
        int[] continuation = SparkatronModel.generate(t, prompt, 8);
        return new Outcome(r.firstLoss(), r.lastLoss(), heldOutLoss, (double) right / total, prompt, continuation, r);
    }

    static SparkatronModel fit(SparkatronEstimator est, TrainConfig cfg, Dataset<Row> train, PrintStream out) {
        est.setDp(cfg.dp).setGlobalBatch(cfg.globalBatch).setSeqLen(cfg.seqLen).setSteps(cfg.steps).setLr(cfg.lr)
                .setMinLr(cfg.minLr).setWarmupSteps((int) cfg.warmupSteps).setWeightDecay(cfg.weightDecay).setSeed(cfg.seed)
                .setInputCol(cfg.inputCol).setDataSplit(cfg.dataSplit).setEvalIters(cfg.evalIters).setProgress(out);
        if (cfg.output != null) {
            est.setOutputPath(cfg.output);
        }
        return est.fit(train);
    }

    /** Prints what the demo measured; returns whether learning clearly happened. */
    public static boolean report(Outcome o, PrintStream out) {
        double chance = 1.0 / VOCAB;
        out.println();
        out.println("== sparkatron demo: results ==");
        for (String line : o.training().summary()) {
            out.println(line);
        }
        out.printf(Locale.ROOT, "uniform guess      ln 64 = %.3f nats%n", Math.log(VOCAB));
        out.printf(Locale.ROOT, "held-out loss      %.3f nats, perplexity %.2f (model Transformer on unseen documents)%n",
                o.heldOutLoss(), Math.exp(o.heldOutLoss()));
        out.printf(Locale.ROOT, "held-out accuracy  %.1f%% of next tokens at positions 2+ (chance %.1f%%)%n", 100 * o.heldOutAccuracy(), 100 * chance);
        int[] truth = new int[o.continuation().length];
        int cur = o.prompt()[o.prompt().length - 1];
        for (int i = 0; i < truth.length; i++) {
            cur = SyntheticData.next(1, cur);
            truth[i] = cur;
        }
        out.println("prompt " + java.util.Arrays.toString(o.prompt()) + " (rule 1) -> greedy continuation "
                + java.util.Arrays.toString(o.continuation()) + "; the rule gives " + java.util.Arrays.toString(truth));
        for (RankReport rr : o.training().ranks()) {
            out.println("rank " + rr.rank() + " ran on executor " + rr.executorId() + " (" + rr.device() + "), read " + rr.samplesRead() + " samples");
        }
        boolean learned = o.lastLoss() < o.firstLoss() - 1.0 && o.heldOutAccuracy() > 10 * chance;
        out.println(learned ? "learning happened: loss fell by more than 1 nat and held-out accuracy is over 10x chance"
                : "WARNING: the model did not learn as expected");
        return learned;
    }
}
