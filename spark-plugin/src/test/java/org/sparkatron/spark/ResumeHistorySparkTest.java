package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.checkpoint.LocalStorage;
import org.sparkatron.optim.LrSchedule;

/**
 * A run continued by a second job keeps its history: {@code metrics.jsonl} lists steps 1..N once each across
 * the two jobs and a retried stage inside the second (the killed attempt's steps after its checkpoint are
 * trained again and listed once); each checkpoint records the resolved config and data description; a
 * learning-rate schedule changed by a longer {@code --steps} is refused before launch, and with
 * {@code use_checkpoint_lr_schedule} the old schedule continues (the LR of the first resumed step is the
 * one the first job's schedule gives).
 */
class ResumeHistorySparkTest {
    @TempDir
    Path tmp;

    private static Dataset<Row> data() {
        return SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(100, 9), "tokens", 2);
    }


    @Test
    @Timeout(300)
    void aContinuedRunKeepsOneContinuousHistory() throws Exception {
        String ckpt = tmp.resolve("ckpt").toString();
        Path out = tmp.resolve("out");
        TrainConfig first = SharedSpark.config(2, 4, 6).with("checkpoint_dir", ckpt).with("checkpoint_every", "3")
                .with("output", out.toString());
        DistributedTraining.run(data(), first, null);
        assertEquals(6, SharedSpark.jsonLines(out.resolve(MetricsLog.FILE)).size());
        var meta = new DistributedCheckpoint(new LocalStorage(), ckpt, 2);
        var saved = meta.metadata(meta.dir(6)).extra();
        assertEquals(6, DistributedTraining.metric(saved.get(RankTask.TRAIN_CONFIG)).path("steps").asInt());
        assertTrue(saved.get(RankTask.DATA).contains("documents"), saved.toString());

        // --steps 10: decay_steps follows steps, so the schedule would change under the resumed run
        TrainConfig longer = first.with("steps", "10");
        IllegalArgumentException refused = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(data(), longer, null));
        assertTrue(refused.getMessage().startsWith("LR schedule changed on resume") && refused.getMessage().contains("decay_steps follows steps")
                && refused.getMessage().contains("use_checkpoint_lr_schedule"), refused.getMessage());
        assertEquals(6, SharedSpark.jsonLines(out.resolve(MetricsLog.FILE)).size(), "a refused job leaves the history alone");

        // continue the old schedule; rank 1 fails at step 9 once, the retry resumes from the step-8 checkpoint
        DistributedTraining.Result r = DistributedTraining.run(data(), longer.with("use_checkpoint_lr_schedule", "true")
                .with("checkpoint_every", "2").with("fail_rank", "1").with("fail_step", "9").with("fail_attempts", "1"), null);
        List<JsonNode> m = SharedSpark.jsonLines(out.resolve(MetricsLog.FILE));
        assertEquals(10, m.size(), m.toString());
        for (int i = 0; i < 10; i++) {
            assertEquals(i + 1, m.get(i).path("step").asInt(), "each step once, in order: " + m);
        }
        assertEquals(0, m.get(7).path("attempt").asInt(), "steps 7-8 from the first attempt of the second job");
        assertEquals(1, m.get(8).path("attempt").asInt(), "steps 9-10 from its retry");
        LrSchedule old = first.schedule();
        assertEquals(old.at(6), m.get(6).path("lr").asDouble(), 1e-9 * old.at(6), "step 7 continues the first job's schedule");
        assertEquals(old.at(9), m.get(9).path("lr").asDouble(), 1e-9 * old.at(9));
        assertEquals(10, r.history().size());
        assertTrue(r.summary().get(0).contains("steps 1-10") && r.summary().get(0).contains("resumed from the checkpoint of step 8"),
                r.summary().toString());
    }
}
