package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@link FailureNotice} over Spark's plugin RPC: with the Sparkatron plugin installed ({@code spark.plugins}) a
 * rank that fails deterministically asks the driver plugin ({@link SparkatronPlugin.Failure}, answered by
 * {@link SparkatronDriverPlugin#receive}) to end the job, and fails its task only once the cancellation is
 * queued; the progress socket is not used for it. A real local session; the listener bus is made to lag 1.5 s
 * behind each failed task ({@link NonRetryableFailureTest.Recorder}), far past Spark's 200 ms resubmission of a
 * failed barrier stage, so the job ends without a retried attempt only if the notice went through the plugin
 * (an unanswered notice leaves the rank to fail at once, and the listener alone loses that race).
 */
class FailureNoticePluginTest {
    @Test
    @Timeout(300)
    void aDivergedRankEndsTheJobOverThePluginRpc() {
        SharedSpark.stop();
        SparkSession spark = SparkSession.builder().master("local[4]").appName("sparkatron-failure-notice-plugin")
                .config("spark.plugins", SparkatronPlugin.class.getName())
                .config("spark.ui.enabled", "false")
                .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.sql.shuffle.partitions", "4")
                .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
                .config("spark.kryo.registrationRequired", "true")
                .config("spark.stage.maxConsecutiveAttempts", "2")
                .getOrCreate();
        try {
            spark.sparkContext().setLogLevel("WARN");
            assertNotNull(SparkatronDriverPlugin.forContext(spark.sparkContext()), "spark.plugins installed the driver plugin");
            assertNotNull(SparkatronPlugin.executorContext(), "and the executor side (local mode: this JVM)");
            NonRetryableFailureTest.Recorder rec = new NonRetryableFailureTest.Recorder();
            TrainConfig cfg = SharedSpark.config(2, 4, 6).with("lr", "1e30").with("min_lr", "1e29").with("warmup_steps", "0");
            ByteArrayOutputStream console = new ByteArrayOutputStream();
            DeterministicFailure e = NonRetryableFailureTest.failsOnce(spark.sparkContext(), DeterministicFailure.class, rec,
                    () -> DistributedTraining.run(SyntheticData.frame(spark, SyntheticData.walks(100, 9), "tokens", 2), cfg,
                            new PrintStream(console, true, StandardCharsets.UTF_8)));
            String text = console.toString(StandardCharsets.UTF_8);
            assertTrue(text.contains("progress over Spark RPC (Sparkatron plugin)"), "the job used the plugin: " + text);
            assertTrue(e.getMessage().contains("non-finite loss") && e.getMessage().contains("check lr"), e.getMessage());
            assertFalse(e.badInput());
            assertEquals(0, rec.inRetries(), "no task ran in a retried attempt: " + rec.taskFailures);
            assertTrue(rec.stageAttempts.stream().allMatch(a -> a == 0), "no stage was retried: attempts " + rec.stageAttempts);
        } finally {
            spark.stop();
        }
    }
}
