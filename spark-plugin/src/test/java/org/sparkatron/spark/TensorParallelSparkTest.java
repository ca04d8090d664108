package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;

/**
 * Tensor parallelism through the Spark barrier stage on local[4]: TP=2 x DP=2 with sequence parallelism
 * (the Estimator-style key {@code tensor_parallel}) and TP=4 each equal one rank on the same global
 * batch, same seed and data: every TP group trained on the same batch, and the returned model (gathered
 * from the shards) is the single-rank model.
 */
class TensorParallelSparkTest {
    // Tolerances as in DataParallelParityTest: losses differ by fp32 summation order only (a few ulps of
    // ~4.2); after 6 AdamW steps weights agree to 2e-4 except where Adam's m/sqrt(v) is ill-conditioned
    // (near-zero gradients), while a TP group fed different batches, or a missing reduction, moves weights
    // by whole steps (~1e-2) and fails.
    private static final double LOSS_TOL = 1e-5;
    private static final double WEIGHT_TOL = 2e-4;

    private static TrainConfig config(int dp, int steps) {
        // 4 heads so that TP = 4 splits them; 2 layers, width 32
        return SharedSpark.config(dp, 8, steps).with("model", SharedSpark.tinyModel().put("n_head", 4));
    }

    @Test
    @Timeout(240)
    void tensorParallelMatchesOneRank() {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(200, 5), "tokens", 2);
        int steps = 6;
        DistributedTraining.Result one = DistributedTraining.run(df, config(1, steps), null);
        DistributedTraining.Result tp2dp2 = DistributedTraining.run(df,
                config(2, steps).with("tensor_parallel", "2").with("sequence_parallel", "true"), null);
        DistributedTraining.Result tp4 = DistributedTraining.run(df, config(1, steps).with("tp", "4"), null);
        assertEquals(4, tp2dp2.ranks().size());
        assertEquals(4, tp4.ranks().size());
        for (RankReport r : tp2dp2.ranks()) {
            assertEquals((long) steps * 8 / 2, r.samplesRead(), "rank " + r.rank() + " saw its replica's samples (TP broadcast)");
        }
        for (RankReport r : tp4.ranks()) {
            assertEquals((long) steps * 8, r.samplesRead(), "rank " + r.rank() + " saw every sample of the one replica");
        }
        for (int s = 0; s < steps; s++) {
            double want = DistributedTraining.Result.loss(one.metrics().get(s));
            assertEquals(want, DistributedTraining.Result.loss(tp2dp2.metrics().get(s)), LOSS_TOL, "tp=2 dp=2 sp loss, step " + (s + 1));
            assertEquals(want, DistributedTraining.Result.loss(tp4.metrics().get(s)), LOSS_TOL, "tp=4 loss, step " + (s + 1));
        }
        float[] w1 = weights(one);
        float[] wa = weights(tp2dp2);
        float[] wb = weights(tp4);
        Transformer init = new Transformer(config(1, steps).model(), new CpuDevice());
        init.initialize(7);
        float[] w0 = new float[w1.length];
        System.arraycopy(init.params().downloadWeights(), 0, w0, 0, w0.length);
        double maxDiff = 0;
        double maxMove = 0;
        for (int i = 0; i < w1.length; i++) {
            maxDiff = Math.max(maxDiff, Math.max(Math.abs(wa[i] - w1[i]), Math.abs(wb[i] - w1[i])));
            maxMove = Math.max(maxMove, Math.abs(w1[i] - w0[i]));
        }
        assertEquals(0, maxDiff, WEIGHT_TOL, "max weight difference to one rank");
        assertTrue(maxMove > 100 * WEIGHT_TOL, "training moved the weights (" + maxMove + "), so the comparison means something");
    }

    private static float[] weights(DistributedTraining.Result r) {
        float[] w = new float[(int) r.model().params().numel()];
        System.arraycopy(r.model().params().downloadWeights(), 0, w, 0, w.length);
        return w;
    }
}
