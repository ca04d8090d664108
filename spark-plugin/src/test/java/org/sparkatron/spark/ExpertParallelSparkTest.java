package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Expert parallelism through the Spark barrier stage on local[4]: a tiny Mixtral (4 experts, top-2) trained
 * with dp = 4 and ep = 2 (experts split over pairs of replicas, tokens by all-to-all, expert gradients over the
 * expert-data-parallel pairs) equals dp = 4 without EP on the same data and seed: the same losses and MoE
 * figures every step, and the same returned model (gathered over EP). A rank that fails under EP 2 is retried
 * from the sharded checkpoint (each EP rank's experts in their own files) and ends bitwise where an undisturbed
 * run ends; a new job at EP 1 resumes from that EP 2 checkpoint. The driver refuses impossible layouts before
 * launching anything.
 */
class ExpertParallelSparkTest {
    // As TensorParallelSparkTest: losses differ by fp32 summation order only; weights after a few AdamW steps
    // agree to 2e-4 except where a gradient is rounding noise, while a wrong reduction moves them by ~1e-2.
    private static final double LOSS_TOL = 1e-5;
    private static final double WEIGHT_TOL = 2e-4;

    static ObjectNode mixtral() {
        ObjectNode m = TrainConfig.JSON.createObjectNode();
        m.put("model_type", "mixtral").put("num_hidden_layers", 2).put("hidden_size", 32).put("intermediate_size", 24)
                .put("num_attention_heads", 4).put("num_key_value_heads", 2).put("vocab_size", 64)
                .put("max_position_embeddings", 32).put("num_local_experts", 4).put("num_experts_per_tok", 2);
        return m;
    }

    private static TrainConfig config(int ep, int steps) {
        return SharedSpark.config(4, 8, steps).with("model", mixtral().toString()).with("ep", "" + ep)
                .with("moe_aux_loss_coeff", "0.01");
    }

    @Test
    @Timeout(300)
    void expertParallelMatchesTheSameReplicasWithoutIt() throws Exception {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(200, 5), "tokens", 4);
        int steps = 3;
        DistributedTraining.Result dense = DistributedTraining.run(df, config(1, steps), null);
        DistributedTraining.Result ep2 = DistributedTraining.run(df, config(2, steps), null);
        assertEquals(4, ep2.ranks().size());
        for (int s = 0; s < steps; s++) {
            JsonNode a = TrainConfig.JSON.readTree(dense.metrics().get(s));
            JsonNode b = TrainConfig.JSON.readTree(ep2.metrics().get(s));
            assertEquals(a.get("loss").asDouble(), b.get("loss").asDouble(), LOSS_TOL, "loss, step " + (s + 1));
            assertTrue(b.has("aux_loss") && b.get("aux_loss").asDouble() > 0, "the step line reports the aux loss: " + b);
            assertEquals(a.get("aux_loss").asDouble(), b.get("aux_loss").asDouble(), 1e-5, "aux loss, step " + (s + 1));
        }
        float[] w1 = dense.model().params().downloadWeights();
        float[] w2 = ep2.model().params().downloadWeights();
        assertEquals(w1.length, w2.length, "the returned model is whole (gathered over EP)");
        double maxDiff = 0;
        for (int i = 0; i < w1.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(w1[i] - w2[i]));
        }
        assertEquals(0, maxDiff, WEIGHT_TOL, "max weight difference");
    }

    @TempDir
    java.nio.file.Path tmp;

    @Test
    @Timeout(300)
    void aRetriedExpertParallelStageResumesBitwiseAndAnotherEpSizeResumesToo() throws Exception {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(200, 5), "tokens", 4);
        // decay_steps fixed, so runs of 4 and 5 steps share the learning-rate schedule
        DistributedTraining.Result clean = DistributedTraining.run(df, config(2, 5).with("decay_steps", "10"), null);
        String root = tmp.resolve("ckpt").toString();
        DistributedTraining.Result r = DistributedTraining.run(df, config(2, 4).with("decay_steps", "10").with("checkpoint_dir", root)
                .with("checkpoint_every", "2").with("fail_rank", "1").with("fail_step", "3").with("fail_attempts", "1"), null);
        assertEquals(2, r.metrics().size(), "the retry ran steps 3 and 4 only: " + r.metrics());
        for (int i = 0; i < 2; i++) {
            assertEquals(DistributedTraining.Result.loss(clean.metrics().get(2 + i)), DistributedTraining.Result.loss(r.metrics().get(i)),
                    0.0, "loss of step " + (3 + i));
        }
        // a job without expert parallelism picks up the EP 2 checkpoint of step 4 and trains step 5
        DistributedTraining.Result ep1 = DistributedTraining.run(df, config(1, 5).with("decay_steps", "10")
                .with("checkpoint_dir", root), null);
        assertEquals(1, ep1.metrics().size(), ep1.metrics().toString());
        assertEquals(5, DistributedTraining.metric(ep1.metrics().get(0)).path("step").asInt());
        assertEquals(DistributedTraining.Result.loss(clean.metrics().get(4)), DistributedTraining.Result.loss(ep1.metrics().get(0)),
                LOSS_TOL, "step 5 at EP 1 after resuming equals step 5 of the EP 2 run");
        float[] w1 = clean.model().params().downloadWeights();
        float[] w2 = ep1.model().params().downloadWeights();
        double maxDiff = 0;
        for (int i = 0; i < w1.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(w1[i] - w2[i]));
        }
        assertEquals(0, maxDiff, WEIGHT_TOL, "max weight difference after step 5");
    }

    @Test
    void impossibleExpertLayoutsAreRefusedBeforeLaunch() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> config(3, 1));
        assertTrue(e.getMessage().contains("ep 3 does not divide dp 4"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Layout.validate(config(4, 1).with("num_experts", "6")));
        assertTrue(e.getMessage().contains("experts 6 not divisible by expert parallel size 4"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(2, 8, 1).with("num_experts", "4"));
        assertTrue(e.getMessage().contains("needs a mixture-of-experts model"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Layout.validate(SharedSpark.config(2, 8, 1).with("ep", "2")));
        assertTrue(e.getMessage().contains("needs a model with experts"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> config(2, 1).with("top_k", "5"));
        assertTrue(e.getMessage().contains("num_experts_per_tok 5"), e.getMessage());
    }
}
