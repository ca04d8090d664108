package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.checkpoint.LocalStorage;

/**
 * A rank fails after the step-3 checkpoint; Spark retries the barrier stage and the new attempt resumes
 * at step 4 (weights, AdamW state, data position) instead of starting over: its losses and the final
 * weights equal an undisturbed run's exactly (CPU, deterministic reductions).
 */
class CheckpointResumeSparkTest {
    @TempDir
    Path tmp;

    private static Dataset<Row> data() {
        return SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(100, 9), "tokens", 2);
    }

    private static float[] weights(DistributedTraining.Result r) {
        float[] w = new float[(int) r.model().params().numel()];
        System.arraycopy(r.model().params().downloadWeights(), 0, w, 0, w.length);
        return w;
    }

    private static DistributedTraining.Result clean;

    /** The undisturbed run (computed once for both tests). */
    private static synchronized DistributedTraining.Result clean() {
        if (clean == null) {
            clean = DistributedTraining.run(data(), SharedSpark.config(2, 4, 8), null);
        }
        return clean;
    }

    @Test
    @Timeout(150)
    void aRetriedStageResumesFromTheLastCheckpoint() throws Exception {
        DistributedTraining.Result clean = clean();
        String root = tmp.resolve("ckpt").toString();
        TrainConfig cfg = SharedSpark.config(2, 4, 8).with("checkpoint_dir", root).with("checkpoint_every", "3")
                .with("fail_rank", "1").with("fail_step", "5").with("fail_attempts", "1");
        DistributedTraining.Result r = DistributedTraining.run(data(), cfg, null);
        for (RankReport rr : r.ranks()) {
            assertEquals(1, rr.attempt(), "the result comes from the retried attempt");
        }
        List<String> m = r.metrics();
        assertEquals(5, m.size(), "the retry ran steps 4..8 only: " + m);
        for (int i = 0; i < 5; i++) {
            assertEquals(4 + i, DistributedTraining.metric(m.get(i)).path("step").asInt());
            assertEquals(DistributedTraining.Result.loss(clean.metrics().get(3 + i)), DistributedTraining.Result.loss(m.get(i)),
                    0.0, "loss of step " + (4 + i));
        }
        assertArrayEquals(weights(clean), weights(r), "final weights equal the undisturbed run's");
        assertEquals(List.of(8L, 6L), new DistributedCheckpoint(new LocalStorage(), root, 2).committedSteps());

        // A new job pointed at the same directory resumes at the end: nothing left to train.
        DistributedTraining.Result again = DistributedTraining.run(data(), SharedSpark.config(2, 4, 8).with("checkpoint_dir", root), null);
        assertTrue(again.metrics().isEmpty(), again.metrics().toString());
        assertArrayEquals(weights(clean), weights(again));
    }

    /**
     * async_save: the step-3 save is committed at the latest when the step-6 save starts; the rank fails before
     * step 7 with the step-6 save still being written, which never commits. The retry resumes at step 4 (not
     * 7), rewrites step 6 over the abandoned attempt's partial directory, and ends as the undisturbed run.
     */
    @Test
    @Timeout(150)
    void withAsyncSavesARetriedStageResumesFromTheLastCommittedCheckpoint() throws Exception {
        DistributedTraining.Result clean = clean();
        String root = tmp.resolve("async").toString();
        TrainConfig cfg = SharedSpark.config(2, 4, 8).with("checkpoint_dir", root).with("checkpoint_every", "3")
                .with("async_save", "true").with("fail_rank", "1").with("fail_step", "7").with("fail_attempts", "1");
        DistributedTraining.Result r = DistributedTraining.run(data(), cfg, null);
        List<String> m = r.metrics();
        assertEquals(5, m.size(), "the retry ran steps 4..8: the step-6 save in flight at the failure never committed: " + m);
        for (int i = 0; i < 5; i++) {
            assertEquals(4 + i, DistributedTraining.metric(m.get(i)).path("step").asInt());
            assertEquals(DistributedTraining.Result.loss(clean.metrics().get(3 + i)), DistributedTraining.Result.loss(m.get(i)),
                    0.0, "loss of step " + (4 + i));
        }
        assertArrayEquals(weights(clean), weights(r), "final weights equal the undisturbed run's");
        assertEquals(List.of(8L, 6L), new DistributedCheckpoint(new LocalStorage(), root, 2).committedSteps());
    }
}
