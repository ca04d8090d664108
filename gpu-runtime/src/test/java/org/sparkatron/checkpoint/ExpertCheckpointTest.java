package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.TestDevices;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.parallel.ExpertGradientSync;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * Sharded checkpoints of expert-parallel runs: every EP rank's experts go to files of their own (one per EP
 * and TP rank, each written once), the checkpoint loads at other EP, TP and DP sizes and saves again with
 * every tensor (weights, AdamW m and v) bitwise what was saved, exports to a Hugging Face Mixtral directory,
 * and a run killed and resumed from its checkpoint (saved blocking or in the background) reproduces the
 * uninterrupted run bitwise.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class ExpertCheckpointTest {
    @TempDir
    Path tmp;

    /** Mixtral-style, 4 experts top-2 with a shared expert, capacity off, aux and z losses on; vocab 61 pads per TP. */
    static ModelConfig config() throws Exception {
        return ModelConfig.fromJson(new ObjectMapper().readTree("{\"model_type\":\"mixtral\",\"num_hidden_layers\":2,"
                + "\"hidden_size\":32,\"intermediate_size\":24,\"num_attention_heads\":8,\"num_key_value_heads\":4,"
                + "\"vocab_size\":61,\"max_position_embeddings\":16,\"tie_word_embeddings\":false,\"sparkatron_vocab_multiple\":8,"
                + "\"num_local_experts\":4,\"num_experts_per_tok\":2,\"shared_expert_intermediate_size\":16,"
                + "\"moe_aux_loss_coeff\":0.01,\"moe_z_loss_coeff\":0.001}"));
    }

    /** One rank of a TP x DP world whose DP replicas hold the experts split EP ways. */
    private record Rank(ProcessGroups groups, Transformer model, GradientSync sync) implements AutoCloseable {
        static Rank of(ModelConfig cfg, int tp, int dp, int ep, Communicator world) {
            ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(tp * dp, tp, 1, ep, 1, 1), world);
            Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), false),
                    Precision.FP32, null, new ExpertParallel(pg.ep(), pg.expertDp())));
            m.initialize(5);
            GradientSync dense = new GradientSync() {
                @Override
                public void syncGradients(Tensor grads) {
                    if (pg.dp().size() > 1) {
                        pg.dp().allReduce(grads, ReduceOp.AVG);
                    }
                }

                @Override
                public void averageScalars(Tensor scalars) {
                    if (pg.dp().size() > 1) {
                        pg.dp().allReduce(scalars, ReduceOp.AVG);
                    }
                }
            };
            return new Rank(pg, m, new ExpertGradientSync(dense, m.params(), pg.expertDp(), dp, m.kernels()));
        }

        Trainer trainer(ModelConfig cfg, long seed) {
            // each replica its own documents (the TP ranks of a replica the same)
            return new Trainer(model, Fixtures.data(cfg, seed + 100L * groups.dp().rank()), Fixtures.options(2), sync);
        }

        @Override
        public void close() {
            model.close();
            groups.close();
        }
    }

    @Test
    void savedAtEp2LoadsAtOtherExpertLayoutsAndBackBitwiseAndExportsMixtral() throws Exception {
        ModelConfig cfg = config();
        LocalStorage fs = new LocalStorage();
        LocalRanks.run(4, (rank, world) -> { // A: TP 2 x DP 2 with EP 2, two steps, saved
            try (Rank r = Rank.of(cfg, 2, 2, 2, world)) {
                Trainer tr = r.trainer(cfg, 11);
                tr.step();
                tr.step();
                new DistributedCheckpoint(fs, tmp.resolve("a").toString(), 2).save(world, 2, r.model(), tr.optimizer(),
                        tr.data().consumed(), Map.of());
                return null;
            }
        });
        Path a = tmp.resolve("a").resolve(DistributedCheckpoint.dirName(2));
        for (String f : new String[] {"model-tp01-of02.safetensors", "optim-tp00-of02.safetensors",
            "model-experts-ep01of02-tp00-of02.safetensors", "optim-experts-ep00of02-tp01-of02.safetensors"}) {
            assertTrue(Files.exists(a.resolve(f)), f);
        }
        try (SafeTensorsFile dense = SafeTensors.open(a.resolve("model-tp00-of02.safetensors"));
             SafeTensorsFile experts = SafeTensors.open(a.resolve("model-experts-ep01of02-tp00-of02.safetensors"))) {
            assertFalse(dense.contains("model/layers.0.moe.experts.up.w"), "experts are not in the dense file");
            assertTrue(dense.contains("model/layers.0.moe.router.w") || dense.names().stream().anyMatch(n -> n.contains("router")),
                    dense.names().toString());
            assertEquals(2L * 2 * 12 * 32, experts.numel("model/layers.1.moe.experts.up.w"),
                    "EP rank 1 / TP rank 0: 2 experts x (gate + up) x 12 rows of width 32");
        }
        reshard(cfg, fs, "a", "b", 1, 1, 1); // one rank
        reshard(cfg, fs, "b", "c", 1, 4, 4); // EP 4 over DP 4
        reshard(cfg, fs, "c", "d", 2, 2, 1); // TP 2 x DP 2 without EP
        reshard(cfg, fs, "d", "e", 2, 2, 2); // back to the saved layout
        Map<String, float[]> saved = Fixtures.globalTensors(a);
        assertTrue(saved.containsKey("optim.v/layers.1.moe.experts.down.w"), saved.keySet().toString());
        for (String other : new String[] {"b", "c", "d", "e"}) {
            Map<String, float[]> o = Fixtures.globalTensors(tmp.resolve(other).resolve(DistributedCheckpoint.dirName(2)));
            assertEquals(saved.keySet(), o.keySet(), other + ": same tensors");
            for (String name : saved.keySet()) {
                assertArrayEquals(bits(saved.get(name)), bits(o.get(name)), other + ": tensor " + name);
            }
        }
        CheckpointMetadata meta = new DistributedCheckpoint(fs, tmp.resolve("c").toString(), 2)
                .metadata(tmp.resolve("c").resolve(DistributedCheckpoint.dirName(2)).toString());
        assertEquals(4, meta.ep());
        assertEquals(2 + 2 * 4, meta.files().size(), "a dense model and optimizer file, and both per EP rank");

        Path hf = tmp.resolve("hf");
        ExportCommand.export(tmp.resolve("a"), hf, -1, msg -> { });
        try (SafeTensorsFile st = SafeTensors.open(hf.resolve("model.safetensors"))) {
            assertTrue(st.contains("model.layers.1.block_sparse_moe.experts.3.w2.weight"), "Hugging Face Mixtral names");
            assertTrue(st.contains("model.layers.0.block_sparse_moe.gate.weight"), "the router as Mixtral's gate");
            assertEquals(HfCheckpoint.names(cfg).size(), st.names().size());
        }
        try (CpuDevice cpu = new CpuDevice()) {
            Transformer exported = ModelStore.load(hf, cpu, Precision.FP32);
            float[] all = exported.params().downloadWeights();
            for (org.sparkatron.model.ParameterSet.Param p : exported.params().params()) {
                float[] mine = java.util.Arrays.copyOfRange(all, (int) p.offset(), (int) (p.offset() + p.numel()));
                assertArrayEquals(bits(saved.get("model/" + p.name())), bits(mine), "exported " + p.name());
            }
        }
    }

    /** Loads checkpoint {@code from} at TP {@code tp} x DP {@code dp} with EP {@code ep} and saves it under {@code to}. */
    private void reshard(ModelConfig cfg, LocalStorage fs, String from, String to, int tp, int dp, int ep) throws Exception {
        LocalRanks.run(tp * dp, (rank, world) -> {
            try (Rank r = Rank.of(cfg, tp, dp, ep, world)) {
                Trainer.Options o = Fixtures.options(2);
                AdamW adam = new AdamW(r.model().params(), r.model().kernels(), o.beta1(), o.beta2(), o.eps(), o.weightDecay());
                CheckpointMetadata meta = new DistributedCheckpoint(fs, tmp.resolve(from).toString(), 2)
                        .resume(world, r.model(), adam, msg -> { }).orElseThrow();
                new DistributedCheckpoint(fs, tmp.resolve(to).toString(), 2).save(world, dp, r.model(), adam,
                        meta.consumedSamples(), meta.extra());
                return null;
            }
        });
    }

    @ParameterizedTest(name = "async save {0}")
    @ValueSource(booleans = {false, true})
    void killedAndResumedExpertParallelRunMatchesTheUninterruptedRun(boolean async) throws Exception {
        ModelConfig cfg = config();
        List<List<Double>> whole = run(cfg, tmp.resolve("whole"), 6, -1, async);
        run(cfg, tmp.resolve("cut"), 6, 4, async); // stopped after step 4 (saved, waited for), checkpoints every 2 steps
        List<List<Double>> resumed = run(cfg, tmp.resolve("cut"), 6, -1, async);
        for (int rank = 0; rank < whole.size(); rank++) {
            assertEquals(whole.get(rank).subList(8, 12), resumed.get(rank), "rank " + rank + ": losses and gradient norms of steps 5, 6");
        }
    }

    /**
     * DP 4 with EP 2 (two expert-data-parallel pairs) to {@code steps}, checkpoints every 2 steps (in the
     * background with {@code async}); stops after {@code killAt}, whose save it waits for.
     */
    private List<List<Double>> run(ModelConfig cfg, Path root, int steps, int killAt, boolean async) throws Exception {
        return LocalRanks.run(4, (rank, world) -> {
            try (Rank r = Rank.of(cfg, 1, 4, 2, world)) {
                Trainer tr = r.trainer(cfg, 21);
                DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), 3);
                try (ResumableTraining rt = new ResumableTraining(tr, dc, world, 4,
                        new ResumableTraining.Options(2, false, Map.of(), async), msg -> { })) {
                    long first = rt.resume() + 1;
                    List<Double> losses = new ArrayList<>();
                    for (long s = first; s <= steps; s++) {
                        Trainer.StepMetrics m = tr.step();
                        losses.add(m.loss());
                        losses.add(m.gradNorm());
                        rt.afterStep(s, s == steps || s == killAt);
                        if (s == killAt) {
                            break;
                        }
                    }
                    return losses;
                }
            }
        });
    }

    private static int[] bits(float[] a) {
        int[] b = new int[a.length];
        for (int i = 0; i < a.length; i++) {
            b[i] = Float.floatToRawIntBits(a[i]);
        }
        return b;
    }
}
