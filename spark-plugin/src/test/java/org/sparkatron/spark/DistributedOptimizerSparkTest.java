package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The Megatron data-parallel keys through a real Spark job ({@code local[2]}, barrier stage): with
 * {@code use_distributed_optimizer} the two replicas keep half the optimizer state each and train exactly as
 * plain data parallelism does (bitwise, with clipping off: two replicas' gradients average to the same numbers
 * whichever collective computes them, AdamW is elementwise), and so it does with {@code overlap_param_gather}
 * (the same all-gather, during the next forward); through the Estimator's Params
 * ({@code useDistributedOptimizer}, {@code overlapGradReduce}, {@code bucketMb}) it equals one rank on the
 * combined batch within {@link DataParallelParityTest}'s tolerances (fp32 summation order only). Bad values are
 * refused on the driver, naming the key, and so is {@code overlap_param_gather} where it cannot apply.
 */
class DistributedOptimizerSparkTest {
    @Test
    @Timeout(240)
    void distributedOptimizerTrainsAsPlainDataParallelismBitwise() {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(200, 5), "tokens", 2);
        int steps = 4;
        TrainConfig plain = SharedSpark.config(2, 8, steps).with("grad_clip", "0").with("bucket_mb", "0.02");
        DistributedTraining.Result a = DistributedTraining.run(df, plain, null);
        TrainConfig distopt = plain.with("use_distributed_optimizer", "true");
        for (TrainConfig c : new TrainConfig[] {distopt, distopt.with("overlap_param_gather", "true")}) {
            assertEquals(c == distopt ? false : true, c.dataParallelConfig().overlapParamGather());
            DistributedTraining.Result b = DistributedTraining.run(df, c, null);
            for (int s = 0; s < steps; s++) {
                assertEquals(DistributedTraining.Result.loss(a.metrics().get(s)), DistributedTraining.Result.loss(b.metrics().get(s)), 0.0,
                        "loss at step " + (s + 1) + " of " + c.dataParallelConfig());
            }
            assertArrayEquals(a.model().params().downloadWeights(), b.model().params().downloadWeights(),
                    "the trained model (fp32 master weights, standard layout) of " + c.dataParallelConfig());
        }
    }

    @Test
    @Timeout(240)
    void estimatorParamsReachTheEngine() {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(200, 5), "tokens", 2);
        int steps = 4;
        SparkatronEstimator est = new SparkatronEstimator().setModelConfig(SharedSpark.tinyModel().toString()).setDp(2)
                .setGlobalBatch(8).setSeqLen(16).setSteps(steps).setLr(1e-2).setMinLr(1e-3).setWarmupSteps(2).setSeed(7)
                .setCommTimeoutS(60).setUseDistributedOptimizer(true).setOverlapGradReduce(false).setBucketMb(0.01)
                .setProgress(null);
        TrainConfig cfg = est.toConfig();
        assertTrue(cfg.useDistributedOptimizer);
        assertTrue(!cfg.overlapGradReduce);
        assertEquals(true, cfg.resolved().get("use_distributed_optimizer").asBoolean());
        est.fit(df);
        DistributedTraining.Result sharded = est.lastResult();
        DistributedTraining.Result one = DistributedTraining.run(df, SharedSpark.config(1, 8, steps), null);
        for (int s = 0; s < steps; s++) {
            double want = DistributedTraining.Result.loss(one.metrics().get(s));
            assertEquals(want, DistributedTraining.Result.loss(sharded.metrics().get(s)), 1e-5, "loss at step " + (s + 1));
        }
        float[] w1 = one.model().params().downloadWeights();
        float[] w2 = sharded.model().params().downloadWeights();
        double maxDiff = 0;
        for (int i = 0; i < w1.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(w1[i] - w2[i]));
        }
        assertEquals(0, maxDiff, 2e-4, "max weight difference against one rank on the combined batch");
    }

    @Test
    void badDataParallelKeysAreRefusedNamingTheKey() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> SharedSpark.config(2, 8, 2).with("use_distributed_optimizer", "\"yes\""));
        assertTrue(e.getMessage().contains("'use_distributed_optimizer' must be true or false"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(2, 8, 2).with("overlap_grad_reduce", "1"));
        assertTrue(e.getMessage().contains("'overlap_grad_reduce' must be true or false"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(2, 8, 2).with("overlap_param_gather", "true"));
        assertTrue(e.getMessage().startsWith("overlap_param_gather needs use_distributed_optimizer"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(2, 8, 2).with("use_distributed_optimizer", "true")
                .with("overlap_grad_reduce", "false").with("overlap_param_gather", "true"));
        assertTrue(e.getMessage().startsWith("overlap_param_gather needs overlap_grad_reduce"), e.getMessage());
        TrainConfig fromParams = new SparkatronEstimator().setModelConfig(SharedSpark.tinyModel().toString()).setDp(2)
                .setGlobalBatch(8).setSeqLen(16).setSteps(2).setUseDistributedOptimizer(true).setOverlapParamGather(true).toConfig();
        assertTrue(fromParams.overlapParamGather && fromParams.dataParallelConfig().overlapParamGather());
        assertEquals(true, fromParams.resolved().get("overlap_param_gather").asBoolean());
        e = assertThrows(IllegalArgumentException.class, () -> new SparkatronEstimator().setModelConfig(SharedSpark.tinyModel().toString())
                .setDp(2).setGlobalBatch(8).setSeqLen(16).setSteps(2).setOverlapParamGather(true).toConfig());
        assertTrue(e.getMessage().contains("overlap_param_gather needs use_distributed_optimizer"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(2, 8, 2).with("bucket_mb", "0"));
        assertTrue(e.getMessage().contains("'bucket_mb' must be > 0"), e.getMessage());
        TrainConfig dflt = SharedSpark.config(2, 8, 2);
        assertEquals(40_000_000L * 4, dflt.bucketBytes, "Megatron's default bucket: max(40M, 1M x dp) elements");
        assertTrue(dflt.overlapGradReduce && !dflt.useDistributedOptimizer && !dflt.overlapParamGather);
    }
}
