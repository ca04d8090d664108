package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import org.apache.spark.ExceptionFailure;
import org.apache.spark.SparkContext;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDatasetWriter;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;

/**
 * Issue 22, finding 4: errors that a retry would repeat end the job once, with the user's message, instead
 * of Spark rerunning the barrier stage (and every step before the error) up to
 * {@code spark.stage.maxConsecutiveAttempts} times (2 in these tests). Found on the driver before launch
 * where possible (out-of-vocabulary ids in bare Megatron datasets, a checkpoint directory that cannot be
 * written, an {@code init_from} model that is damaged or holds NaN weights, named by the user's path);
 * otherwise classified in the task (a diverged loss, a bad sample) and ended by {@link FailFast}.
 *
 * <p>Under load. Spark resubmits a failed barrier stage 200 ms after the failure, while listeners hear of it
 * through the asynchronous listener bus; a listener alone (FailFast's first design) lost that race whenever
 * the bus lagged by more than 200 ms, and Spark submitted the retry before the cancellation. Here the
 * recorder itself makes the bus lag: it holds each failed task's event for 1.5 s before the listeners after
 * it (FailFast among them) see it. The job must still end without a second attempt, which it does because
 * the failing rank tells the driver first ({@link FailureNotice}) and fails its task only once the job's
 * cancellation is queued. Each recorder counts only the stages of the jobs started while it listens, so
 * late events of an earlier test's killed tasks cannot leak into a later test.
 */
@Timeout(180)
class NonRetryableFailureTest {
    @TempDir
    Path dir;

    /**
     * Stage attempts submitted, and the exception class of each failed task ("attempt N: class"), of the jobs
     * started while it listens; it holds each failed task's event for {@link #LAG_MS} (a loaded listener bus).
     */
    static final class Recorder extends SparkListener {
        static final long LAG_MS = 1500; // well past Spark's 200 ms barrier-stage resubmission delay
        final List<Integer> stageAttempts = new CopyOnWriteArrayList<>();
        final List<String> taskFailures = new CopyOnWriteArrayList<>();
        private final java.util.Set<Integer> stages = java.util.concurrent.ConcurrentHashMap.newKeySet();

        long deterministic(int attempt) {
            return taskFailures.stream().filter(f -> f.equals("attempt " + attempt + ": " + DeterministicFailure.class.getName())).count();
        }

        long inRetries() {
            return taskFailures.stream().filter(f -> !f.startsWith("attempt 0:")).count();
        }

        @Override
        public void onJobStart(org.apache.spark.scheduler.SparkListenerJobStart e) {
            e.stageIds().foreach(id -> stages.add((Integer) id));
        }

        @Override
        public void onStageSubmitted(SparkListenerStageSubmitted e) {
            if (stages.contains(e.stageInfo().stageId())) {
                stageAttempts.add(e.stageInfo().attemptNumber());
            }
        }

        @Override
        public void onTaskEnd(SparkListenerTaskEnd e) {
            if (e.reason() instanceof ExceptionFailure ef && stages.contains(e.stageId())) {
                taskFailures.add("attempt " + e.stageAttemptId() + ": " + ef.className());
                try {
                    Thread.sleep(LAG_MS); // the listeners after this one hear of the failure late
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                }
            }
        }
    }

    private static <T extends Throwable> T failsOnce(Class<T> type, Recorder rec, org.junit.jupiter.api.function.Executable job) {
        return failsOnce(SharedSpark.get().sparkContext(), type, rec, job);
    }

    /** Runs {@code job} on {@code sc}, which must fail with {@code type}, with {@code rec} listening (and lagging the bus). */
    static <T extends Throwable> T failsOnce(SparkContext sc, Class<T> type, Recorder rec, org.junit.jupiter.api.function.Executable job) {
        sc.addSparkListener(rec);
        try {
            return assertThrows(type, job);
        } finally {
            try {
                sc.listenerBus().waitUntilEmpty(30_000); // every event of the job has reached the recorder
            } catch (java.util.concurrent.TimeoutException e) {
                throw new AssertionError("listener bus did not drain", e);
            }
            sc.removeSparkListener(rec);
        }
    }

    private static Dataset<Row> data() {
        return SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(100, 9), "tokens", 2);
    }

    @Test
    void aDivergedLossEndsTheJobAtOnce() {
        Recorder rec = new Recorder();
        TrainConfig cfg = SharedSpark.config(2, 4, 6).with("lr", "1e30").with("min_lr", "1e29").with("warmup_steps", "0");
        DeterministicFailure e = failsOnce(DeterministicFailure.class, rec, () -> DistributedTraining.run(data(), cfg, null));
        assertTrue(e.getMessage().contains("non-finite loss") && e.getMessage().contains("check lr"), e.getMessage());
        assertFalse(e.badInput());
        // the ranks that diverged were cancelled right after their notice: their tasks end failed or killed
        assertEquals(0, rec.inRetries(), "no task ran in a retried attempt: " + rec.taskFailures);
        assertTrue(rec.stageAttempts.stream().allMatch(a -> a == 0), "no stage was retried: attempts " + rec.stageAttempts);
    }

    private String megatronWithBadId(String name) throws Exception {
        String prefix = dir.resolve(name).toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.UINT16)) {
            List<int[]> docs = SyntheticData.walks(60, 3);
            for (int i = 0; i < docs.size(); i++) {
                int[] d = docs.get(i).clone();
                if (i % 7 == 3) {
                    d[d.length / 2] = 70; // the tiny model's vocabulary is 64
                }
                w.addDocument(d);
            }
        }
        return prefix;
    }

    @Test
    void outOfVocabularyMegatronIdsAreRefusedBeforeLaunchOrOnceInTheTask() throws Exception {
        String prefix = megatronWithBadId("bad-ids");
        TrainConfig cfg = SharedSpark.config(2, 8, 4).with("input_format", "megatron").with("input", prefix);
        Recorder before = new Recorder();
        IllegalArgumentException refused = failsOnce(IllegalArgumentException.class, before,
                () -> DistributedTraining.runMegatron(SharedSpark.get(), cfg, null));
        assertTrue(refused.getMessage().contains(prefix) && refused.getMessage().contains("outside the model's vocabulary of 64")
                && refused.getMessage().contains(": 70"), refused.getMessage());
        assertTrue(before.taskFailures.isEmpty(), "the driver's scan refused it, no rank ran: " + before.taskFailures);

        Recorder inTask = new Recorder();
        IllegalArgumentException once = failsOnce(IllegalArgumentException.class, inTask,
                () -> DistributedTraining.runMegatron(SharedSpark.get(), cfg.with("check_token_ids", "false"), null));
        assertTrue(once.getMessage().contains("holds token id 70") && once.getMessage().contains(prefix), once.getMessage());
        assertTrue(inTask.deterministic(0) <= 1 && inTask.inRetries() == 0, "the bad sample failed one attempt at most once, "
                + "no retry ran: " + inTask.taskFailures);
        assertTrue(inTask.stageAttempts.stream().allMatch(a -> a == 0), "no stage was retried: attempts " + inTask.stageAttempts);
    }

    @Test
    void anUnwritableCheckpointDirectoryIsRefusedBeforeLaunch() throws Exception {
        Path file = Files.writeString(dir.resolve("a-file"), "not a directory");
        Recorder rec = new Recorder();
        IllegalArgumentException e = failsOnce(IllegalArgumentException.class, rec, () -> DistributedTraining.run(data(),
                SharedSpark.config(2, 4, 2).with("checkpoint_dir", file.resolve("ckpt").toString()), null));
        assertTrue(e.getMessage().contains("checkpoint_dir '" + file.resolve("ckpt") + "' is not writable"), e.getMessage());
        assertTrue(rec.taskFailures.isEmpty(), rec.taskFailures.toString());
        IllegalArgumentException isFile = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(data(),
                SharedSpark.config(2, 4, 2).with("checkpoint_dir", file.toString()), null));
        assertTrue(isFile.getMessage().contains("is a file, not a directory"), isFile.getMessage());
    }

    @Test
    void aDamagedOrNanInitFromModelIsRefusedBeforeLaunchNamingTheUsersPath() throws Exception {
        TrainConfig cfg = SharedSpark.config(2, 4, 2);
        Path nan = dir.resolve("nan-model");
        Transformer m = new Transformer(cfg.model(), new CpuDevice());
        m.initialize(3);
        float[] weights = m.params().downloadWeights();
        weights[100] = Float.NaN;
        m.params().uploadWeights(weights);
        ModelStore.save(m, nan);
        Recorder rec = new Recorder();
        IllegalArgumentException e = failsOnce(IllegalArgumentException.class, rec,
                () -> DistributedTraining.run(data(), cfg.with("init_from", nan.toString()), null));
        assertTrue(e.getMessage().contains(nan.resolve(ModelStore.WEIGHTS).toString()) && e.getMessage().contains("non-finite"), e.getMessage());
        assertFalse(e.getMessage().contains("sparkatron-init"), "names the temporary copy: " + e.getMessage());
        assertTrue(rec.taskFailures.isEmpty(), rec.taskFailures.toString());

        Path damaged = dir.resolve("damaged-model");
        weights = m.params().downloadWeights();
        weights[100] = 0.5f;
        m.params().uploadWeights(weights);
        ModelStore.save(m, damaged);
        Path w = damaged.resolve(ModelStore.WEIGHTS);
        byte[] bytes = Files.readAllBytes(w);
        Files.write(w, java.util.Arrays.copyOf(bytes, bytes.length - 1000));
        e = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(data(), cfg.with("init_from", damaged.toString()), null));
        assertTrue(e.getMessage().contains(damaged.toString()), e.getMessage());
        assertFalse(e.getMessage().contains("sparkatron-init"), "names the temporary copy: " + e.getMessage());
    }
}
