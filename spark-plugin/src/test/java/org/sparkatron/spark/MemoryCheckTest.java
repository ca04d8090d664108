package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.spark.SparkConf;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.model.MemoryEstimate;

/**
 * The driver's memory check: GPT-2 XL and Llama-2 7B shapes (sizes past 2^31 bytes), local mode and executors,
 * the refusal's numbers and suggestions checked against the estimate itself, and a refused job that never
 * reaches Spark's scheduler.
 */
class MemoryCheckTest {
    static TrainConfig gpt2xl(int dp) {
        ObjectNode m = TrainConfig.JSON.createObjectNode().put("model_type", "gpt2").put("n_layer", 48).put("n_embd", 1600)
                .put("n_head", 25).put("n_positions", 1024).put("vocab_size", 50257);
        ObjectNode c = TrainConfig.JSON.createObjectNode();
        c.set("model", m);
        c.put("dp", dp).put("global_batch", 8 * dp).put("micro_batch", 8).put("seq_len", 1024);
        return TrainConfig.fromJson(c);
    }

    static TrainConfig llama7b(int tp, int microBatch) {
        ObjectNode m = TrainConfig.JSON.createObjectNode().put("model_type", "llama").put("num_hidden_layers", 32)
                .put("hidden_size", 4096).put("num_attention_heads", 32).put("num_key_value_heads", 32)
                .put("intermediate_size", 11008).put("vocab_size", 32000).put("max_position_embeddings", 4096)
                .put("tie_word_embeddings", false);
        ObjectNode c = TrainConfig.JSON.createObjectNode();
        c.set("model", m);
        c.put("dp", 1).put("tp", tp).put("global_batch", 8).put("micro_batch", microBatch).put("seq_len", 4096);
        return TrainConfig.fromJson(c);
    }

    static MemoryCheck.Budget executors(String memory, int cores, int gpus) {
        SparkConf conf = new SparkConf(false).set("spark.executor.memory", memory).set("spark.executor.cores", String.valueOf(cores))
                .set("spark.executor.resource.gpu.amount", String.valueOf(gpus));
        return new MemoryCheck.Budget(conf, false, gpus > 0);
    }

    @Test
    void sizesPast32BitsAreCountedIn64() {
        MemoryEstimate e = MemoryCheck.estimate(llama7b(1, 1), 1, 1);
        // Llama-2 7B has 6,738,415,616 parameters (its vocabulary of 32000 needs no padding to 128)
        assertEquals(4L * 6_738_415_616L, e.parameters(), "fp32 master weights");
        assertEquals(4L * 6_738_415_616L, e.gradients());
        assertEquals(8L * 6_738_415_616L, e.optimizer(), "AdamW's m and v");
        assertTrue(e.activations() > 0 && e.total() > 16L * 6_738_415_616L, e.summary());
    }

    @Test
    void aJobThatFitsGetsItsLine() {
        TrainConfig small = SharedSpark.config(2, 4, 2);
        String line = MemoryCheck.check(small, executors("1g", 1, 1));
        assertTrue(line.startsWith("memory per rank (tp=1, micro_batch 2 x 16 tokens, fp32): parameters "), line);
        assertTrue(line.contains("an executor (spark.executor.memory=1g) runs up to 1 rank(s)"), line);
    }

    @Test
    void ranksPerExecutorFollowCoresAndGpus() {
        assertEquals(4, executors("8g", 4, 0).ranksPerJvm(8), "CPU ranks: one per task slot");
        assertEquals(2, executors("8g", 4, 2).ranksPerJvm(8), "one GPU per rank: the GPUs bound it");
        assertEquals(3, executors("8g", 4, 0).ranksPerJvm(3), "never more than the world");
        SparkConf conf = new SparkConf(false);
        assertEquals(6, new MemoryCheck.Budget(conf, true, false).ranksPerJvm(6), "local mode: every rank in this JVM");
        assertEquals(Runtime.getRuntime().maxMemory(), new MemoryCheck.Budget(conf, true, false).bytesPerJvm());
    }

    /** GPT-2 XL with dp=2 in this JVM (issue 21's report: four failed stage attempts) is refused with the numbers. */
    @Test
    void gpt2XlInLocalModeIsRefusedWithItsNumbers() {
        TrainConfig cfg = gpt2xl(2);
        MemoryCheck.Budget local = new MemoryCheck.Budget(new SparkConf(false), true, false);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> MemoryCheck.check(cfg, local));
        MemoryEstimate per = MemoryCheck.estimate(cfg, 1, 8);
        String m = e.getMessage();
        assertTrue(m.startsWith("the job does not fit in memory: each rank needs " + MemoryCheck.gib(per.total()) + " (" + per.summary()
                + "); this JVM (local mode, "), m);
        assertTrue(m.contains(") runs all 2 rank(s), " + MemoryCheck.gib(MemoryCheck.need(2, per.total())) + " with Spark's 300 MiB, above "
                + MemoryCheck.gib(Runtime.getRuntime().maxMemory())), m);
        assertTrue(m.contains("a larger heap (SPARKATRON_JAVA_OPTS=-Xmx..., or a cluster with --master)"), m);
        assertTrue(m.contains("Pipeline parallelism (pp) splits the layers over more ranks; use_distributed_optimizer shards"), m);
    }

    /** On executors the suggestions are the smallest TP and the largest micro-batch that fit, checked here. */
    @Test
    void llama7bOnExecutorsGetsSuggestionsThatFit() {
        MemoryCheck.Budget budget = executors("200g", 1, 1); // one rank per executor
        TrainConfig cfg = llama7b(1, 4);
        String m = assertThrows(IllegalArgumentException.class, () -> MemoryCheck.check(cfg, budget)).getMessage();
        assertTrue(m.contains("an executor (spark.executor.memory=200g) runs up to 1 rank(s)"), m);
        Matcher tp = Pattern.compile("To fit: tp=(\\d+) ").matcher(m);
        assertTrue(tp.find(), m);
        int t = Integer.parseInt(tp.group(1));
        assertFits(llama7b(t, 4), budget, true);
        for (int smaller = 1; smaller < t; smaller++) {
            assertFits(llama7b(smaller, 4), budget, false);
        }
        Matcher mb = Pattern.compile("micro_batch=(\\d+) ").matcher(m);
        assertTrue(mb.find(), m);
        int b = Integer.parseInt(mb.group(1));
        assertFits(llama7b(1, b), budget, true);
        for (int larger = b + 1; larger < 4; larger++) {
            if (8 % larger == 0) {
                assertFits(llama7b(1, larger), budget, false);
            }
        }
        assertTrue(m.contains("more memory per executor (spark.executor.memory) or fewer ranks per executor"), m);
    }

    /** Eight CPU ranks of 7B in one 80 GB executor: no TP or micro-batch helps (the executor holds all of them). */
    @Test
    void whenNothingFitsOnlyMemoryIsSuggested() {
        String m = assertThrows(IllegalArgumentException.class, () -> MemoryCheck.check(llama7b(1, 4), executors("80g", 8, 8))).getMessage();
        assertFalse(m.contains("tp=") || m.contains("micro_batch="), m);
        assertTrue(m.contains("To fit: more memory per executor"), m);
    }

    private static void assertFits(TrainConfig cfg, MemoryCheck.Budget budget, boolean fits) {
        boolean ok;
        try {
            MemoryCheck.check(cfg, budget);
            ok = true;
        } catch (IllegalArgumentException refused) {
            ok = false;
        }
        assertEquals(fits, ok, "tp=" + cfg.tp + " fits: " + fits);
    }

    @Test
    void theCheckCanBeTurnedOff() {
        MemoryCheck.Budget budget = new MemoryCheck.Budget(new SparkConf(false).set(MemoryCheck.CONF, "false"), true, false);
        assertTrue(MemoryCheck.check(gpt2xl(2), budget).startsWith("memory per rank"));
    }

    /** Through the Spark entry point: refused on the driver before any stage runs. */
    @Test
    @Timeout(120)
    void theDriverRefusesBeforeLaunching() {
        var spark = SharedSpark.get();
        long jobsBefore = spark.sparkContext().statusTracker().getJobIdsForGroup(null).length;
        var df = spark.createDataFrame(java.util.List.of(org.apache.spark.sql.RowFactory.create((Object) new Integer[] {1, 2, 3})),
                new org.apache.spark.sql.types.StructType().add("tokens",
                        org.apache.spark.sql.types.DataTypes.createArrayType(org.apache.spark.sql.types.DataTypes.IntegerType)));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(df, gpt2xl(2), null));
        assertTrue(e.getMessage().startsWith("the job does not fit in memory"), e.getMessage());
        assertEquals(jobsBefore, spark.sparkContext().statusTracker().getJobIdsForGroup(null).length, "no Spark job ran");
    }
}
