package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.Trainer;

/**
 * Mixed precision keeps the compute weights in real 16-bit elements (Megatron's bf16 parameters), which the
 * results of the parity, checkpoint and golden tests cannot see (they are bitwise those of a 16-bit copy in fp32
 * elements). This checks the storage itself, on a DP 2 run with data parallelism in the model:
 *
 * <ul>
 *   <li>distributed optimizer: during training the weight block is BF16/F16, every parameter all-gather moves
 *       16-bit elements, and the device's requested bytes per kind are Megatron's accounting exactly (the 16-bit
 *       weights 2, gradients 4, master and moments 12 per owned element), equal to {@code MemoryEstimate};
 *       {@link Transformer#finishParamGather} widens the block to fp32 with the same values, and the next step
 *       narrows it again. With and without {@code overlap_param_gather}.</li>
 *   <li>plain data parallelism: the fp32 master block plus a BF16/F16 compute block (4 + 2 bytes).</li>
 *   <li>both: the fp32 staging buffer is the model's only other weight-sized memory, smaller than the largest
 *       unit it widens plus its alignment, and counted as workspace by the estimate.</li>
 * </ul>
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class SixteenBitWeightsTest {
    private static final int MICRO = 2;

    @ParameterizedTest(name = "{0} distributed optimizer={1} overlap_param_gather={2}")
    @CsvSource({
        "bf16, true, false",
        "fp16, true, true",
        "bf16, false, false",
    })
    void weightsAreStoredAndGatheredIn16Bits(String precision, boolean distributed, boolean overlapGather) throws Exception {
        ModelConfig cfg = ParityRun.config("gpt2", 4);
        Precision p = Precision.parse(precision);
        DType half = p.format();
        DataParallel.Config ddp = new DataParallel.Config(distributed, 600, true, overlapGather);
        List<String> failures = LocalRanks.run(2, (rank, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(2, 1, 1, 1, 1, 1);
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                List<String> gathered = Collections.synchronizedList(new ArrayList<>());
                GradReduceOverlapTest.Recording dp = new GradReduceOverlapTest.Recording(pg.dp(), Collections.synchronizedList(
                        new ArrayList<>()));
                dp.beforeGather = t -> gathered.add(t.dtype() + " " + t.byteSize());
                Device device = TestDevices.create();
                RankContext ctx = new RankContext(device, TensorParallel.none(), p,
                        new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), 1, 1, -1, -1), pg.embedding()),
                        new DataParallel(dp, ddp));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                Trainer tr = new Trainer(m, ParityRun.source(cfg, pg.coords()[3], 2, 2), PipelineRun.options(2, MICRO));
                long numel = m.params().numel();
                for (int s = 0; s < 3; s++) {
                    tr.step();
                }
                assertEquals(half, m.computeWeights().dtype(), "the compute weights' elements");
                long owned = m.dataParallel().plan().ownedNumel();
                long staging = m.weightStagingBytes();
                var est = m.memoryEstimate(2, ParityRun.SEQ, MICRO);
                var mem = device.memory();
                if (distributed) {
                    assertEquals(half, m.params().weights().dtype(), "the weight block during training");
                    assertEquals(2 * numel, mem.requested(MemoryKind.PARAMETERS), "parameters: 2 bytes each");
                    assertEquals(12 * owned, mem.requested(MemoryKind.OPTIMIZER), "optimizer: fp32 master, m, v of the shard");
                    List<String> seen = new ArrayList<>(gathered);
                    assertTrue(!seen.isEmpty(), "the parameters were all-gathered");
                    for (String g : seen) {
                        if (!g.startsWith("I32") && !g.startsWith("F64")) {
                            assertTrue(g.startsWith(half + " "), "a parameter all-gather moved " + g + ", not " + half + " elements");
                        }
                    }
                    Tensor block = m.params().weights();
                    float[] widened = widened(device, block);
                    m.finishParamGather();
                    assertEquals(DType.F32, m.params().weights().dtype(), "outside a pass the weight block is fp32");
                    assertEquals(4 * numel, device.memory().requested(MemoryKind.PARAMETERS), "the 16-bit block went back");
                    float[] fp32 = TestDevices.read(device, m.params().weights());
                    if (!overlapGather) { // (with it, other ranks' shards arrive only now, with the deferred gather)
                        assertArrayEquals(widened, fp32, "widened exactly");
                    }
                    for (float v : fp32) {
                        assertEquals(Float.floatToRawIntBits(v), Float.floatToRawIntBits(p.round(v)), "a 16-bit value: " + v);
                    }
                    tr.step();
                    assertEquals(half, m.params().weights().dtype(), "the next step narrows it again");
                    assertEquals(2 * numel, device.memory().requested(MemoryKind.PARAMETERS), "and returns the fp32 block");
                } else {
                    assertEquals(DType.F32, m.params().weights().dtype(), "plain DP keeps the fp32 master");
                    assertEquals(6 * numel, mem.requested(MemoryKind.PARAMETERS), "parameters: fp32 master + 16-bit copy");
                    assertEquals(8 * numel, mem.requested(MemoryKind.OPTIMIZER), "optimizer: m, v");
                }
                assertEquals(4 * numel, mem.requested(MemoryKind.GRADIENTS), "gradients: fp32");
                assertEquals(est.parameters(), mem.requested(MemoryKind.PARAMETERS), "the estimate's parameters");
                assertEquals(est.optimizer(), mem.requested(MemoryKind.OPTIMIZER), "the estimate's optimizer state");
                long largest = largestUnit(m.params());
                assertTrue(staging >= 4 * largest && staging <= 4 * (largest + 4 * 64),
                        "staging buffer of " + staging + " bytes for a largest unit of " + largest + " elements");
                tr.close();
                m.close();
                return "";
            }
        });
        for (String f : failures) {
            assertEquals("", f);
        }
    }

    /**
     * A mixture-of-experts layer's experts lie in the expert region at the block's end, apart from the layer's
     * other weights: its unit is widened from two runs of the block. The bf16 model's logits stay within
     * MixedPrecisionModelTest's bound (15 unit roundoffs of the largest logit) of the fp32 model's, which a view
     * into the wrong run (another layer's or the padding's weights) would break by far.
     */
    @org.junit.jupiter.api.Test
    void expertWeightsAreWidenedWithTheirLayer() throws Exception {
        ModelConfig cfg = MoeRun.config(2, "");
        Transformer f32 = new Transformer(cfg, RankContext.single(TestDevices.create()));
        Transformer half = new Transformer(cfg, RankContext.single(TestDevices.create(), Precision.BF16));
        f32.initialize(ParityRun.SEED);
        half.initialize(ParityRun.SEED);
        ParameterSet ps = half.params();
        assertTrue(ps.param("layers.0.moe.experts.up.w").offset() > ps.param("layers.1.attn.qkv.w").offset(),
                "layer 0's experts lie after layer 1's attention");
        int b = 2;
        int t = 8;
        int[] samples = new int[b * (t + 1)];
        for (int i = 0; i < samples.length; i++) {
            samples[i] = (i * 7 + 3) % cfg.vocabSize();
        }
        float[] want = f32.logits(samples, b, t);
        float[] got = half.logits(samples, b, t);
        double scale = 0;
        double err = 0;
        for (int i = 0; i < want.length; i++) {
            scale = Math.max(scale, Math.abs(want[i]));
            err = Math.max(err, Math.abs(want[i] - got[i]));
        }
        double u = Math.scalb(1.0, -9); // bf16's unit roundoff
        assertTrue(err > 1e-5 * scale, "bf16 logits differ from fp32 by more than fp32 noise: " + err);
        assertTrue(err <= 15 * u * scale, "bf16 logits within 15u of the largest logit: " + err + " vs " + scale);
        f32.close();
        half.close();
    }

    /** The elements of the largest unit (a layer's parameters, the embedding, ...), padding between them included. */
    private static long largestUnit(ParameterSet ps) {
        java.util.Map<String, long[]> span = new java.util.HashMap<>();
        for (ParameterSet.Param q : ps.params()) {
            String n = q.name();
            String unit = n.startsWith("layers.") ? n.substring(0, n.indexOf('.', 7)) : n.startsWith("norm_f.") ? "norm_f" : n;
            long[] s = span.computeIfAbsent(unit, u -> new long[] {Long.MAX_VALUE, 0});
            s[0] = Math.min(s[0], q.offset());
            s[1] = Math.max(s[1], q.offset() + q.numel());
        }
        return span.values().stream().mapToLong(s -> s[1] - s[0]).max().orElse(0);
    }

    /** A 16-bit device block's values as floats (exact). */
    private static float[] widened(Device device, Tensor block) {
        Tensor f = device.allocate(MemoryKind.WORKSPACE, DType.F32, block.numel());
        device.kernels().widen(f, block, block.numel());
        float[] out = TestDevices.read(device, f);
        device.release(f);
        return out;
    }
}
