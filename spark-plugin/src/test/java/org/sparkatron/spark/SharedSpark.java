package org.sparkatron.spark;

import com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.spark.sql.SparkSession;

/**
 * One local[4] session for every local-mode test class of this module (they run in one Surefire JVM):
 * starting Spark costs seconds. Kryo with {@code registrationRequired=true} is on for all of them, so every
 * test also checks that the training shuffles need no registration from the user; stage attempts are
 * capped at 2 so the failure tests end quickly.
 */
final class SharedSpark {
    private static SparkSession spark;

    private SharedSpark() {
    }

    static synchronized SparkSession get() {
        if (spark == null || spark.sparkContext().isStopped()) { // a test with its own session stopped this one
            SparkSession.clearActiveSession();
            SparkSession.clearDefaultSession();
            spark = SparkSession.builder().master("local[4]").appName("sparkatron-tests")
                    .config("spark.ui.enabled", "false")
                    .config("spark.driver.host", "127.0.0.1")
                    .config("spark.driver.bindAddress", "127.0.0.1")
                    .config("spark.sql.shuffle.partitions", "4")
                    .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
                    .config("spark.kryo.registrationRequired", "true")
                    .config("spark.stage.maxConsecutiveAttempts", "2")
                    .getOrCreate();
            spark.sparkContext().setLogLevel("WARN");
        }
        return spark;
    }

    /** Stops the shared session (for a test that needs a session of its own); {@link #get} starts a new one. */
    static synchronized void stop() {
        if (spark != null) {
            spark.stop();
            spark = null;
        }
        SparkSession.getActiveSession().foreach(s -> {
            s.stop();
            return null;
        });
    }

    /** The JSON objects of a JSON-lines file (blank lines skipped). */
    static java.util.List<com.fasterxml.jackson.databind.JsonNode> jsonLines(java.nio.file.Path f) throws java.io.IOException {
        java.util.List<com.fasterxml.jackson.databind.JsonNode> out = new java.util.ArrayList<>();
        for (String l : java.nio.file.Files.readAllLines(f)) {
            if (!l.isBlank()) {
                out.add(TrainConfig.JSON.readTree(l));
            }
        }
        return out;
    }

    /** A tiny GPT-2: 2 layers, width 32, 2 heads, 32 positions, 64-token vocabulary. */
    static ObjectNode tinyModel() {
        ObjectNode m = TrainConfig.JSON.createObjectNode();
        m.put("model_type", "gpt2").put("n_layer", 2).put("n_embd", 32).put("n_head", 2).put("n_positions", 32)
                .put("vocab_size", 64);
        return m;
    }

    /** A config for the tiny model on sequences of 16 tokens. */
    static TrainConfig config(int dp, int globalBatch, int steps) {
        ObjectNode c = TrainConfig.JSON.createObjectNode();
        c.set("model", tinyModel());
        c.put("dp", dp).put("global_batch", globalBatch).put("seq_len", 16).put("steps", steps).put("lr", 1e-2)
                .put("min_lr", 1e-3).put("warmup_steps", 2).put("seed", 7).put("comm_timeout_s", 60);
        return TrainConfig.fromJson(c);
    }
}
