package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Data parallelism equals one rank on the combined batch: DP=2 with 4 samples per replica against one
 * rank with 8 samples (and against one rank accumulating 2 micro-batches of 4), same seed and data.
 */
class DataParallelParityTest {
    // Tolerances. Losses: the same 128 token losses summed in a different order in fp32, then averaged
    // across replicas: differences of a few ulps of ~4.2, far below 1e-5. Weights: 6 AdamW steps at
    // lr 1e-2 move each weight by up to ~6e-2; gradient rounding differences of ~1e-6 relative change an
    // update by far less, except where the gradient is near zero and Adam's m/sqrt(v) is ill-conditioned:
    // 2e-4 (2% of one step) bounds that while a wrong reduction (e.g. SUM instead of AVG, a lost bucket)
    // moves weights by whole steps and fails.
    private static final double LOSS_TOL = 1e-5;
    private static final double WEIGHT_TOL = 2e-4;

    @Test
    @Timeout(180)
    void dpTwoMatchesOneRankOnTheCombinedBatch() {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(200, 5), "tokens", 2);
        int steps = 6;
        // buckets of 50 KB: the ~120 KB gradient block goes in 3 all-reduces, so bucketing is exercised
        TrainConfig dp2 = SharedSpark.config(2, 8, steps).with("bucket_mb", "0.05");
        TrainConfig one = SharedSpark.config(1, 8, steps);
        TrainConfig accum = SharedSpark.config(1, 8, steps).with("micro_batch", "4");
        DistributedTraining.Result a = DistributedTraining.run(df, dp2, null);
        DistributedTraining.Result b = DistributedTraining.run(df, one, null);
        DistributedTraining.Result c = DistributedTraining.run(df, accum, null);
        for (int s = 0; s < steps; s++) {
            double lb = DistributedTraining.Result.loss(b.metrics().get(s));
            assertEquals(lb, DistributedTraining.Result.loss(a.metrics().get(s)), LOSS_TOL, "dp=2 loss at step " + (s + 1));
            assertEquals(lb, DistributedTraining.Result.loss(c.metrics().get(s)), LOSS_TOL, "accumulated loss at step " + (s + 1));
        }
        float[] wa = weights(a);
        float[] wb = weights(b);
        float[] wc = weights(c);
        org.sparkatron.model.Transformer init = new org.sparkatron.model.Transformer(one.model(),
                new org.sparkatron.device.cpu.CpuDevice());
        init.initialize(one.seed);
        float[] w0 = new float[wa.length];
        System.arraycopy(init.params().downloadWeights(), 0, w0, 0, w0.length);
        double maxDiff = 0;
        double maxMove = 0;
        for (int i = 0; i < wa.length; i++) {
            maxDiff = Math.max(maxDiff, Math.max(Math.abs(wa[i] - wb[i]), Math.abs(wc[i] - wb[i])));
            maxMove = Math.max(maxMove, Math.abs(wb[i] - w0[i]));
        }
        assertEquals(0, maxDiff, WEIGHT_TOL, "max weight difference");
        // the comparison is meaningful only if training moved the weights well beyond the tolerance
        org.junit.jupiter.api.Assertions.assertTrue(maxMove > 100 * WEIGHT_TOL, "weights moved " + maxMove);
    }

    private static float[] weights(DistributedTraining.Result r) {
        float[] w = new float[(int) r.model().params().numel()];
        System.arraycopy(r.model().params().downloadWeights(), 0, w, 0, w.length);
        return w;
    }
}
