package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.model.Recompute;

/**
 * Pipeline parallelism through the Spark barrier stage on local[4], against one rank on the same global
 * batches, seed and data: PP 2 x DP 2 with full recomputation, PP 2 x TP 2 with sequence parallelism and the
 * interleaved schedule (Megatron's {@code num_layers_per_virtual_pipeline_stage}), and PP 4 (two stages
 * between the first and the last, which read no data). Only each replica's first and last stage receive
 * samples, and the returned model, gathered from every stage's TP shards, is the single-rank model.
 */
class PipelineParallelSparkTest {
    // As in TensorParallelSparkTest: micro-batches and pipeline stages change fp32 summation order only
    // (losses agree to a few ulps of ~4.2); after 6 AdamW steps weights agree to 2e-4 where Adam is
    // well-conditioned, while a stage fed another replica's batch, a missing tied-embedding reduction, or a
    // stage's weights put in the wrong place moves them by whole steps (~1e-2) and fails.
    private static final double LOSS_TOL = 1e-5;
    private static final double WEIGHT_TOL = 2e-4;
    private static final int STEPS = 6;

    private static TrainConfig config(int dp) {
        // 4 layers (PP 4, or PP 2 with two chunks per rank), 4 heads (TP 2), GPT-2's tied embedding
        return SharedSpark.config(dp, 8, STEPS).with("model", SharedSpark.tinyModel().put("n_layer", 4).put("n_head", 4));
    }

    @Test
    @Timeout(300)
    void pipelineParallelMatchesOneRank() {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(200, 5), "tokens", 2);
        DistributedTraining.Result one = DistributedTraining.run(df, config(1), null);
        DistributedTraining.Result pp2dp2 = DistributedTraining.run(df,
                config(2).with("pp", "2").with("micro_batch", "2").with("recompute", "\"full\""), null);
        DistributedTraining.Result pp2tp2 = DistributedTraining.run(df, config(1).with("pp", "2").with("tp", "2")
                .with("sequence_parallel", "true").with("micro_batch", "2").with("num_layers_per_virtual_pipeline_stage", "1"), null);
        DistributedTraining.Result pp4 = DistributedTraining.run(df, config(1).with("pp", "4").with("micro_batch", "2"), null);

        // world rank = tp + TP x dp + TP x DP x stage: who read samples
        for (RankReport r : pp2dp2.ranks()) { // stage = rank / 2: both stages of both replicas need data
            assertEquals((long) STEPS * 8 / 2, r.samplesRead(), "pp2 dp2 rank " + r.rank());
        }
        for (RankReport r : pp2tp2.ranks()) {
            assertEquals((long) STEPS * 8, r.samplesRead(), "pp2 tp2 rank " + r.rank());
        }
        for (RankReport r : pp4.ranks()) { // stages 1 and 2 sit between the first and the last
            boolean needsData = r.rank() == 0 || r.rank() == 3;
            assertEquals(needsData ? (long) STEPS * 8 : 0, r.samplesRead(), "pp4 rank " + r.rank());
        }
        for (int s = 0; s < STEPS; s++) {
            double want = DistributedTraining.Result.loss(one.metrics().get(s));
            assertEquals(want, DistributedTraining.Result.loss(pp2dp2.metrics().get(s)), LOSS_TOL, "pp2 dp2 loss, step " + (s + 1));
            assertEquals(want, DistributedTraining.Result.loss(pp2tp2.metrics().get(s)), LOSS_TOL, "pp2 tp2 vpp2 loss, step " + (s + 1));
            assertEquals(want, DistributedTraining.Result.loss(pp4.metrics().get(s)), LOSS_TOL, "pp4 loss, step " + (s + 1));
        }
        float[] w1 = one.model().params().downloadWeights();
        float[] w0 = initial(config(1));
        double maxMove = 0;
        for (int i = 0; i < w1.length; i++) {
            maxMove = Math.max(maxMove, Math.abs(w1[i] - w0[i]));
        }
        assertTrue(maxMove > 100 * WEIGHT_TOL, "training moved the weights (" + maxMove + "), so the comparison means something");
        for (DistributedTraining.Result r : new DistributedTraining.Result[] {pp2dp2, pp2tp2, pp4}) {
            float[] w = r.model().params().downloadWeights();
            assertEquals(w1.length, w.length, "the returned model has the single-rank layout");
            double maxDiff = 0;
            for (int i = 0; i < w1.length; i++) {
                maxDiff = Math.max(maxDiff, Math.abs(w[i] - w1[i]));
            }
            assertEquals(0, maxDiff, WEIGHT_TOL, "max weight difference to one rank");
        }
    }

    @Test
    void pipelineKeysAndRefusals() {
        TrainConfig c = config(1).with("pp", "2").with("micro_batch", "2").with("num_layers_per_virtual_pipeline_stage", "1")
                .with("recompute_granularity", "\"selective\"");
        assertEquals(2, c.virtualPp);
        assertEquals(Recompute.SELECTIVE, c.recompute);
        assertEquals(2, c.resolved().get("virtual_pp").asInt());
        assertEquals("selective", c.resolved().get("recompute").asText());
        Layout.validate(c);
        assertEquals(1, config(1).with("pp", "2").with("decoder_first_pipeline_num_layers", "1").pipelineLayout().endLayer(0, 0));

        assertRefused("4 layers are not divisible by pipeline size 3", config(1).with("pp", "3"));
        assertRefused("pipeline size 8 is larger than the 4 layers", config(1).with("pp", "8"));
        assertRefused("needs the number of micro-batches (1) to be a multiple of the pipeline size (2)",
                config(1).with("pp", "2").with("virtual_pp", "2"));
        assertRefused("first stage 3 + last stage 2 layers leave -1 of the 4 layers for 0 other stage(s)",
                config(1).with("pp", "2").with("decoder_first_pipeline_num_layers", "3").with("decoder_last_pipeline_num_layers", "2"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> config(1).with("recompute", "\"everything\""));
        assertTrue(e.getMessage().contains("recompute must be none, selective or full, got 'everything'"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> config(1).with("pp", "2").with("virtual_pp", "2")
                .with("num_layers_per_virtual_pipeline_stage", "2"));
        assertTrue(e.getMessage().contains("disagree"), e.getMessage());
    }

    private static void assertRefused(String expected, TrainConfig c) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Layout.validate(c));
        assertTrue(e.getMessage().contains(expected), e.getMessage());
    }

    private static float[] initial(TrainConfig c) {
        org.sparkatron.model.Transformer init = new org.sparkatron.model.Transformer(c.model(), new org.sparkatron.device.cpu.CpuDevice());
        init.initialize(7);
        float[] w = init.params().downloadWeights();
        init.close();
        return w;
    }
}
