package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A rank that throws mid-training: its peer, blocked in an all-reduce, fails fast (communicator abort),
 * Spark retries the whole barrier stage, and the retry trains from the start. A rank that always throws
 * ends the job with the rank's error after spark.stage.maxConsecutiveAttempts (2 here), never a hang.
 */
class RankFailureTest {
    private static Dataset<Row> data() {
        return SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(100, 9), "tokens", 2);
    }

    @Test
    @Timeout(120)
    void aRankThatThrowsOnceIsRetriedByStage() {
        TrainConfig cfg = SharedSpark.config(2, 4, 5).with("fail_rank", "1").with("fail_step", "3").with("fail_attempts", "1");
        DistributedTraining.Result r = DistributedTraining.run(data(), cfg, System.out);
        assertEquals(2, r.ranks().size());
        for (RankReport rr : r.ranks()) {
            assertEquals(1, rr.attempt(), "the result comes from the retried attempt");
        }
        assertEquals(5, r.metrics().size());
        // the retry is a clean start: its losses equal an undisturbed run's
        DistributedTraining.Result clean = DistributedTraining.run(data(), SharedSpark.config(2, 4, 5), null);
        for (int s = 0; s < 5; s++) {
            assertEquals(DistributedTraining.Result.loss(clean.metrics().get(s)), DistributedTraining.Result.loss(r.metrics().get(s)), 1e-6);
        }
    }

    @Test
    @Timeout(120)
    void aRankThatAlwaysThrowsFailsTheJobWithItsError() {
        TrainConfig cfg = SharedSpark.config(2, 4, 5).with("fail_rank", "0").with("fail_step", "2").with("fail_attempts", "99");
        Exception e = assertThrows(Exception.class, () -> DistributedTraining.run(data(), cfg, null));
        String all = String.valueOf(e.getMessage());
        for (Throwable c = e.getCause(); c != null; c = c.getCause()) {
            all += " | " + c.getMessage();
        }
        assertTrue(all.contains("injected failure: rank 0 at step 2"), all);
    }
}
