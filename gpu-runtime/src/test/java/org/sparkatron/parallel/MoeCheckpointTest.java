package org.sparkatron.parallel;

import org.sparkatron.model.ModelLayout;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.HfCheckpoint;
import org.sparkatron.checkpoint.SafeTensorsFile;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.Trainer;

/**
 * Expert shards move between layouts: a model trained one step at TP 2 x EP 2 saves a Hugging Face Mixtral
 * directory (experts gathered over TP and EP, HF's {@code block_sparse_moe.experts.{e}.w1/w2/w3} names) that
 * loads at EP 4, at EP 1 with TP 2, and on one rank, each rank keeping exactly its experts' shards: every
 * layout gathers back the same weights, bitwise. Refusals: experts not divisible by EP, expert widths not
 * divisible by TP, and EP without experts. Sharded step checkpoints under EP: ExpertCheckpointTest.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class MoeCheckpointTest {

    private static RankContext ctx(ProcessGroups pg, boolean sp) {
        return new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), sp), Precision.FP32, null,
                new ExpertParallel(pg.ep(), pg.expertDp()));
    }

    @Test
    void aModelDirectorySavedAtOneExpertLayoutLoadsAtAnother(@TempDir Path dir) throws Exception {
        ModelConfig cfg = MoeRun.config(2, "\"shared_expert_intermediate_size\":16");
        Path saved = dir.resolve("m");
        List<Map<String, float[]>> trained = LocalRanks.run(4, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(4, 2, 1, 2, 1, 1), world)) {
                Transformer m = new Transformer(cfg, ctx(pg, false));
                m.initialize(3);
                Trainer tr = new Trainer(m, ParityRun.source(cfg, pg.dp().rank(), 2, 2), ParityRun.options(2),
                        new ExpertGradientSync(ParityRun.averaging(pg.dp()), m.params(), pg.expertDp(), 2, m.kernels()));
                tr.step();
                TpCheckpoint.save(m, saved);
                Transformer full = TpCheckpoint.gatherFull(m, false);
                Map<String, float[]> w = PipelineRun.byName(full, false);
                full.close();
                return w;
            }
        });
        try (SafeTensorsFile st = SafeTensorsFile.open(saved.resolve("model.safetensors"))) {
            assertTrue(st.contains("model.layers.1.block_sparse_moe.experts.3.w2.weight"), "HF Mixtral names");
            assertEquals(HfCheckpoint.names(cfg).size(), st.names().size());
        }
        for (int[] shape : new int[][] {{1, 4}, {2, 1}, {1, 1}, {2, 2}}) { // tp, ep
            int tp = shape[0];
            int ep = shape[1];
            List<Map<String, float[]>> loaded = LocalRanks.run(tp * ep, (rank, world) -> {
                try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(tp * ep, tp, 1, ep, 1, 1), world)) {
                    Transformer m = TpCheckpoint.load(saved, ctx(pg, tp > 1));
                    assertEquals(cfg.moe().experts() / ep, m.params().param("layers.0.moe.experts.up.w").shape()[0],
                            "each EP rank holds its share of the experts");
                    Transformer full = TpCheckpoint.gatherFull(m, false);
                    Map<String, float[]> w = PipelineRun.byName(full, false);
                    full.close();
                    return w;
                }
            });
            for (Map<String, float[]> w : loaded) {
                for (Map.Entry<String, float[]> e : trained.get(0).entrySet()) {
                    assertArrayEquals(e.getValue(), w.get(e.getKey()), "tp " + tp + " ep " + ep + ": " + e.getKey());
                }
            }
        }
        assertTrue(Files.exists(saved.resolve("config.json")));
        assertEquals(cfg, ModelConfig.load(saved.resolve("config.json")), "the config round-trips through Mixtral's config.json");
    }

    @Test
    void impossibleExpertLayoutsAreRefusedNamingTheNumbers() throws Exception {
        ModelConfig cfg = MoeRun.config(2, "");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ModelLayout.validateExperts(cfg, 3, 1));
        assertEquals("experts 4 not divisible by expert parallel size 3", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ModelLayout.validateExperts(cfg, 1, 5));
        assertEquals("expert intermediate size 24 not divisible by tensor parallel size 5", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ModelLayout.validateExperts(ParityRun.config("llama"), 2, 1));
        assertTrue(e.getMessage().contains("needs a model with experts"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"num_experts_per_tok\":5"));
        assertTrue(e.getMessage().contains("num_experts_per_tok 5 must be in [1, num_local_experts = 4]"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"scoring_func\":\"relu\""));
        assertTrue(e.getMessage().contains("scoring_func 'relu' is not supported"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"moe_pad_expert_input_to_capacity\":true"));
        assertTrue(e.getMessage().contains("needs moe_expert_capacity_factor"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"router_jitter_noise\":0.1"));
        assertTrue(e.getMessage().contains("router_jitter_noise"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"moe_router_enable_expert_bias\":true"));
        assertTrue(e.getMessage().contains("moe_router_enable_expert_bias needs the sigmoid score function"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2,
                "\"scoring_func\":\"sigmoid\",\"moe_router_score_function\":\"softmax\""));
        assertTrue(e.getMessage().contains("disagree"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"moe_layer_freq\":[1,0,1]"));
        assertTrue(e.getMessage().contains("gives 3 layers, but num_hidden_layers is 2"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"moe_layer_freq\":\"[1,2]*1\""));
        assertTrue(e.getMessage().contains("not a list of 0/1"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"moe_input_jitter_eps\":0.01"));
        assertTrue(e.getMessage().contains("moe_input_jitter_eps 0.01 is not supported yet"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> MoeRun.config(2, "\"moe_shared_expert_gate\":true"));
        assertTrue(e.getMessage().contains("moe_shared_expert_gate"), e.getMessage());
    }

    /** Megatron's names read as HF's, moe_layer_freq's three forms alike, and the config written back reads the same. */
    @Test
    void megatronNamesAndLayerPatternsReadAlike() throws Exception {
        ModelConfig hf = MoeRun.config(4, "\"scoring_func\":\"sigmoid\",\"routed_scaling_factor\":2.5,"
                + "\"shared_expert_intermediate_size\":16,\"moe_layer_freq\":2,\"dense_intermediate_size\":40");
        ModelConfig megatron = MoeRun.config(4, "\"moe_router_score_function\":\"sigmoid\",\"moe_router_topk_scaling_factor\":2.5,"
                + "\"moe_shared_expert_intermediate_size\":16,\"moe_layer_freq\":\"([1,0]*2)\",\"dense_intermediate_size\":40");
        ModelConfig list = MoeRun.config(4, "\"moe_router_score_function\":\"sigmoid\",\"moe_router_topk_scaling_factor\":2.5,"
                + "\"moe_shared_expert_intermediate_size\":16,\"moe_layer_freq\":[1,0,1,0],\"dense_intermediate_size\":40");
        for (ModelConfig c : new ModelConfig[] {hf, megatron, list}) {
            assertTrue(c.moe().sigmoid() && c.moe().normTopK() && c.moe().topKScale() == 2.5f && c.moe().sharedFfn() == 16);
            for (int i = 0; i < 4; i++) {
                assertEquals(i % 2 == 0, c.moe().isMoeLayer(i), "layer " + i + " of " + c.moe());
            }
            assertEquals(c, ModelConfig.fromJson(c.toJson()), "round trip");
        }
        ModelConfig pre = MoeRun.config(2, "\"moe_router_pre_softmax\":true");
        assertEquals(false, pre.moe().normTopK(), "pre-softmax: no renormalisation over the top k");
        ModelConfig biased = MoeRun.config(2, "\"moe_router_score_function\":\"sigmoid\",\"moe_router_enable_expert_bias\":true");
        assertEquals(1e-3f, biased.moe().biasUpdateRate(), "Megatron's default update rate");
        try (org.sparkatron.device.cpu.CpuDevice d = new org.sparkatron.device.cpu.CpuDevice()) {
            Transformer m = new Transformer(biased, d);
            m.initialize(7);
            float[] w = m.params().downloadWeights();
            for (int layer = 0; layer < 2; layer++) {
                org.sparkatron.model.ParameterSet.Param p = m.params().param("layers." + layer + ".moe.router.b");
                for (long i = p.offset(); i < p.offset() + p.numel(); i++) {
                    assertEquals(0f, w[(int) i], "the expert bias starts at zero, as Megatron's");
                }
            }
            m.close();
        }
    }
}
