package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code precision: fp8} through the whole Spark path: a barrier stage of two data-parallel CPU ranks on
 * local[N], delayed scaling with a 4-pass max window (its amaxes reduced over the replicas by
 * {@code DataParallelSync.maxOverReplicas}), from the Estimator. The same job in bf16 is the peer: the fp8
 * losses track it (each of the last 5 within 0.05 nats: 20 steps of a 64-token walk language, where the
 * loss still falls by ~0.05 a step) and fall well below the start.
 */
class Fp8SparkTest {
    @TempDir
    Path tmp;

    @Test
    @Timeout(240)
    void fp8TrainsOnTwoDataParallelRanksLikeBf16() throws Exception {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(300, 11), "tokens", 2);
        double[][] losses = new double[2][];
        String[] precisions = {"bf16", "fp8"};
        for (int p = 0; p < 2; p++) {
            SparkatronEstimator e = new SparkatronEstimator().setModelConfig(SharedSpark.tinyModel().toString()).setDp(2)
                    .setGlobalBatch(8).setSeqLen(16).setSteps(20).setLr(1e-2).setMinLr(1e-3).setWarmupSteps(2).setSeed(7)
                    .setOutputPath(tmp.resolve(precisions[p]).toString()).setPrecision(precisions[p]);
            if (p == 1) {
                e.setFp8AmaxHistoryLen(4).setFp8AmaxComputeAlgo("max");
            }
            e.fit(df);
            java.util.List<String> lines = e.lastResult().metrics();
            assertEquals(20, lines.size());
            losses[p] = lines.stream().mapToDouble(DistributedTraining.Result::loss).toArray();
        }
        System.out.println("Fp8SparkTest bf16 " + java.util.Arrays.toString(losses[0]) + "\nFp8SparkTest fp8  "
                + java.util.Arrays.toString(losses[1]));
        assertTrue(losses[1][19] < losses[1][0] - 1, "fp8 learns: " + losses[1][0] + " -> " + losses[1][19]);
        for (int s = 15; s < 20; s++) {
            assertEquals(losses[0][s], losses[1][s], 0.05, "step " + (s + 1) + " fp8 vs bf16");
        }
    }
}
