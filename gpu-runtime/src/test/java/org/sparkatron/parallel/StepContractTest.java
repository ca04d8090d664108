package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.Device;
import org.sparkatron.device.DeviceMemoryException;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.MemoryEstimate;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.DynamicGradScaler;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.Trainer;

/**
 * The training step's device contract, counted rather than claimed: exactly {@link Trainer#SYNCS_PER_STEP}
 * (one) host synchronisation per optimizer step, no system allocation in any step after the first, device
 * memory in use unchanged from step to step, and the device's figures equal to what {@link MemoryEstimate}
 * predicts from the model's shape, for both families, every precision, micro-batches, dropout, TP with and
 * without sequence parallelism, DP, PP and CP (ring and all-gather, with TP/SP and recompute). Runs on the CPU
 * device and, in the strict-device suite, on the strict one. Also: a Llama-7B configuration is counted in 64 bits
 * and refused, with the bytes it needs, by a device that cannot hold it.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class StepContractTest {
    private static final int STEPS = 4;
    private static final int BATCH = 2;

    /** What one rank saw: syncs and system allocations of each step, in-use bytes after it, the memory report. */
    record Seen(long[] syncs, long[] allocs, long[] inUse, String report) {
    }

    private static Seen run(Trainer tr) {
        Device d = tr.model().device();
        long[] syncs = new long[STEPS];
        long[] allocs = new long[STEPS];
        long[] inUse = new long[STEPS];
        String report = null;
        for (int s = 0; s < STEPS; s++) {
            long s0 = d.synchronizations();
            long a0 = d.systemAllocations();
            tr.step();
            syncs[s] = d.synchronizations() - s0;
            allocs[s] = d.systemAllocations() - a0;
            inUse[s] = d.memory().inUse();
            if (s == 0) {
                report = tr.memoryReport();
            }
        }
        return new Seen(syncs, allocs, inUse, report);
    }

    private static void check(Seen seen, String what) throws Exception {
        check(seen, what, Trainer.SYNCS_PER_STEP);
    }

    private static void check(Seen seen, String what, int syncs) throws Exception {
        for (int s = 0; s < STEPS; s++) {
            assertEquals(syncs, seen.syncs()[s], what + ": host synchronisations in step " + (s + 1));
            if (s > 0) {
                assertEquals(0, seen.allocs()[s], what + ": system allocations in step " + (s + 1));
                assertEquals(seen.inUse()[0], seen.inUse()[s], what + ": device memory in use after step " + (s + 1));
            }
        }
        JsonNode r = new ObjectMapper().readTree(seen.report());
        for (MemoryKind k : MemoryKind.values()) {
            String n = k.name().toLowerCase(Locale.ROOT);
            assertEquals(r.get(n + "_predicted").asLong(), r.get(n).asLong(), what + ": " + n + " measured vs predicted: " + r);
        }
    }

    @ParameterizedTest
    @CsvSource({"gpt2, fp32, 1, 0", "llama, fp32, 2, 0.1", "gpt2, bf16, 1, 0.1", "llama, fp16, 1, 0", "gpt2, fp8, 2, 0.1",
        "llama, fp8, 1, 0"})
    void oneRank(String family, String precision, int micro, float dropout) throws Exception {
        ModelConfig cfg = ParityRun.config(family);
        Precision p = Precision.parse(precision);
        Transformer m = new Transformer(cfg, RankContext.single(TestDevices.create(), p));
        m.initialize(ParityRun.SEED);
        m.setDropout(dropout, 3);
        Trainer.Options o = ParityRun.options(BATCH);
        Trainer.Options opt = new Trainer.Options(BATCH, micro, o.schedule(), o.beta1(), o.beta2(), o.eps(), o.weightDecay(),
                o.gradClip());
        Trainer tr = new Trainer(m, ParityRun.source(cfg, 0, 1, BATCH), opt, org.sparkatron.train.GradientSync.NONE,
                p.needsLossScaling() ? DynamicGradScaler.Config.defaults() : null);
        check(run(tr), family + " " + precision + " x" + micro + " dropout " + dropout);
    }

    @ParameterizedTest
    @CsvSource({"gpt2, 2, 1, false, fp32", "llama, 2, 1, true, fp32", "gpt2, 2, 2, true, fp32", "llama, 1, 2, false, fp32",
        "gpt2, 2, 2, true, fp8"})
    void tensorAndDataParallelRanks(String family, int tp, int dp, boolean sp, String precision) throws Exception {
        ModelConfig cfg = ParityRun.config(family);
        List<Seen> seen = LocalRanks.run(tp * dp, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(tp * dp, tp, 1, 1, 1, 1), world)) {
                Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), sp),
                        Precision.parse(precision)));
                m.initialize(ParityRun.SEED);
                int dpRank = pg.coords()[3];
                Trainer tr = new Trainer(m, ParityRun.source(cfg, dpRank, dp, BATCH), ParityRun.options(BATCH),
                        ParityRun.averaging(pg.dp()));
                return run(tr);
            }
        });
        for (int r = 0; r < seen.size(); r++) {
            check(seen.get(r), family + " tp " + tp + " dp " + dp + " sp " + sp + " " + precision + ", rank " + r);
        }
    }

    /**
     * Mixture of experts: without expert parallelism, and with it padded to capacity, a step still waits once;
     * dropless (or unpadded) EP adds exactly one count read per MoE layer and micro-batch, which
     * {@link Trainer#syncsPerStep()} says. Memory equals the estimate (worst-case dispatch buffers) in every mode;
     * in bf16 with the expert weights (in the expert region at the block's end) widened with their layer's into
     * the fp32 staging buffer.
     */
    @ParameterizedTest(name = "ep={0} micro={1} {2} {3} {4} {5}")
    @CsvSource(delimiter = '|', value = {
        "1 | 1 | NONE      | dropless | 1 | fp32",
        "1 | 2 | FULL      | capacity | 1 | fp32",
        "1 | 1 | SELECTIVE | sigmoid  | 1 | fp32",
        "2 | 2 | NONE      | dropless | 5 | fp32",
        "2 | 1 | FULL      | dropless | 3 | fp32",
        "2 | 2 | NONE      | padded   | 1 | fp32",
        "2 | 1 | NONE      | sigmoid  | 2 | fp32",
        "2 | 2 | FULL      | dropless | 5 | bf16",
        "1 | 1 | SELECTIVE | sigmoid  | 1 | bf16",
    })
    void mixtureOfExperts(int ep, int micro, org.sparkatron.model.Recompute mode, String variant, int syncs, String precision)
            throws Exception {
        String extra = switch (variant) {
            case "capacity" -> "\"moe_expert_capacity_factor\":1.0";
            case "padded" -> "\"moe_expert_capacity_factor\":1.0,\"moe_pad_expert_input_to_capacity\":true";
            case "sigmoid" -> "\"moe_router_score_function\":\"sigmoid\",\"moe_shared_expert_intermediate_size\":16,"
                    + "\"moe_layer_freq\":[1,0],\"dense_intermediate_size\":40,\"moe_router_enable_expert_bias\":true";
            default -> "";
        };
        ModelConfig cfg = MoeRun.config(2, extra);
        List<Seen> seen = LocalRanks.run(ep, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(ep, 1, 1, ep, 1, 1), world)) {
                RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), false), Precision.parse(precision),
                        null, new ExpertParallel(pg.ep(), pg.expertDp()));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                m.setRecompute(mode);
                Trainer.Options o = ParityRun.options(BATCH);
                Trainer.Options opt = new Trainer.Options(BATCH, micro, o.schedule(), o.beta1(), o.beta2(), o.eps(), o.weightDecay(),
                        o.gradClip());
                Trainer tr = new Trainer(m, ParityRun.source(cfg, pg.dp().rank(), ep, BATCH), opt,
                        new ExpertGradientSync(ParityRun.averaging(pg.dp()), m.params(), pg.expertDp(), ep, m.kernels()));
                assertEquals(syncs, tr.syncsPerStep(), "the trainer's own count");
                return run(tr);
            }
        });
        for (int r = 0; r < seen.size(); r++) {
            check(seen.get(r), "moe ep " + ep + " x" + micro + " " + mode + " " + variant + " " + precision + ", rank " + r, syncs);
        }
    }

    @ParameterizedTest
    @CsvSource({"gpt2, 2, 1, NONE, fp32", "llama, 2, 2, SELECTIVE, fp32", "gpt2, 4, 1, FULL, fp32", "gpt2, 2, 2, NONE, fp8",
        "llama, 2, 1, FULL, fp8", "llama, 4, 1, SELECTIVE, fp8"})
    void pipelineRanks(String family, int pp, int vpp, org.sparkatron.model.Recompute mode, String precision) throws Exception {
        ModelConfig cfg = ParityRun.config(family, 8);
        List<Seen> seen = LocalRanks.run(pp, (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(pp, 1, 1, 1, pp, vpp), world)) {
                PipelineParallel stage = new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), pp, vpp, -1, -1),
                        pg.embedding());
                Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), TensorParallel.none(),
                        Precision.parse(precision), stage));
                m.initialize(ParityRun.SEED);
                m.setRecompute(mode);
                m.setDropout(0.1f, 3);
                Trainer tr = new Trainer(m, ParityRun.source(cfg, 0, 1, BATCH), PipelineRun.options(BATCH, 4),
                        org.sparkatron.train.GradientSync.NONE);
                return run(tr);
            }
        });
        for (int r = 0; r < seen.size(); r++) {
            check(seen.get(r), family + " pp " + pp + " vpp " + vpp + " " + mode + " " + precision + ", stage " + r);
        }
    }

    @ParameterizedTest
    @CsvSource({"llama, 2, p2p, 1, false, NONE", "gpt2, 4, all_gather, 1, false, SELECTIVE", "gpt2, 2, p2p, 2, true, FULL",
                "llama, 2, all_gather, 2, true, NONE"})
    void contextParallelRanks(String family, int cp, String mode, int tp, boolean sp,
                              org.sparkatron.model.Recompute recompute) throws Exception {
        ModelConfig cfg = ContextParallelRun.config(family, 2);
        ContextParallelRun.Setup setup = ContextParallelRun.Setup.of(tp, cp, mode, 1, 1, sp).with(recompute, 0.1f);
        List<Seen> seen = LocalRanks.run(setup.world(), (rank, world) -> {
            try (ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(setup.world(), tp, cp, 1, 1, 1), world)) {
                Transformer m = ContextParallelRun.model(cfg, setup, pg);
                m.setRecompute(recompute);
                m.setDropout(0.1f, 3);
                Trainer tr = new Trainer(m, ContextParallelRun.source(cfg, 0, 1, BATCH), ParityRun.options(BATCH),
                        ParityRun.averaging(pg.dpWithCp()));
                return run(tr);
            }
        });
        for (int r = 0; r < seen.size(); r++) {
            check(seen.get(r), family + " cp " + cp + " " + mode + " tp " + tp + " sp " + sp + " " + recompute + ", rank " + r);
        }
    }

    /** Llama-2-7B's shape: 6,738,415,616 parameters (Hugging Face's count), in 64 bits; refused where it cannot fit. */
    @Test
    void aSevenBillionParameterModelIsCountedIn64BitsAndRefusedByADeviceTooSmall() throws Exception {
        ModelConfig cfg = ModelConfig.fromJson(new ObjectMapper().readTree("{\"model_type\":\"llama\",\"num_hidden_layers\":32,"
                + "\"hidden_size\":4096,\"intermediate_size\":11008,\"num_attention_heads\":32,\"num_key_value_heads\":32,"
                + "\"vocab_size\":32000,\"max_position_embeddings\":4096,\"tie_word_embeddings\":false}"));
        MemoryEstimate e = MemoryEstimate.of(cfg, 1, false, 1, 4096, Precision.BF16, 2);
        assertEquals(4L * 6_738_415_616L, e.gradients(), "fp32 gradients of 6,738,415,616 parameters (32000 is a multiple of 128)");
        assertEquals(8L * 6_738_415_616L, e.optimizer());
        assertEquals(6L * 6_738_415_616L, e.parameters(), "fp32 master weights and a bf16 copy");
        MemoryEstimate tp8 = MemoryEstimate.of(cfg, 8, true, 1, 4096, Precision.BF16, 2);
        assertTrue(tp8.parameters() < e.parameters() / 7, "TP 8 holds an eighth, plus replicated norms");
        try (CpuDevice small = CpuDevice.withCapacity(16L << 30)) {
            DeviceMemoryException ex = assertThrows(DeviceMemoryException.class, () -> new Transformer(cfg, small));
            assertTrue(ex.getMessage().contains("6738415616 parameters") && ex.getMessage().contains("53,907,324,928 bytes"),
                    ex.getMessage());
            assertEquals(0, small.systemAllocations(), "refused before allocating anything");
        }
    }

    @Test
    void aConvenienceReadIsTheOnlyOtherSynchronisation() throws Exception {
        ModelConfig cfg = ParityRun.config("gpt2");
        Transformer m = new Transformer(cfg, TestDevices.create());
        m.initialize(1);
        Device d = m.device();
        long s0 = d.synchronizations();
        int[] batch = new int[BATCH * (ParityRun.SEQ + 1)];
        m.forwardBackward(batch, BATCH, ParityRun.SEQ, 1f);
        assertEquals(s0 + 1, d.synchronizations(), "the double-returning form reads its loss: one synchronisation");
        org.sparkatron.tensor.Tensor acc = d.zeros(MemoryKind.WORKSPACE, org.sparkatron.tensor.DType.F64, 1);
        m.forwardBackward(batch, BATCH, ParityRun.SEQ, 1f, acc, 0, 1.0);
        m.gradSquaredNorm(acc, 0);
        assertEquals(s0 + 1, d.synchronizations(), "the device-scalar forms never wait for the device");
    }
}
