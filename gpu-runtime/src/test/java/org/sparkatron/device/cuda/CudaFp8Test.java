package org.sparkatron.device.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.precision.Fp8Format;
import org.sparkatron.precision.Fp8Recipe;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.MarkovCorpus;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * The CUDA device's FP8 path (fp8.cu and cuBLASLt's FP8 GEMMs) against the CPU device's: casts bit for bit
 * on every bf16 bit pattern (all signs, exponents, NaNs, infinities, subnormals and every FP8 rounding tie,
 * since the midpoints of both formats are bf16 values) and on random fp32 bit patterns (the sticky bits
 * below bf16), the scale updates bit for bit, and whole FP8 training steps. The kernel contracts are tested
 * on this device too by {@code Fp8KernelsTest} and {@code Fp8RecipeTest} (the build's cuda-device run).
 *
 * <p>Training tolerances: both devices cast identically, but their GEMMs sum in different orders (cuBLASLt
 * vs OpenBLAS), and a value an fp32 ulp apart can round to the neighbouring FP8 code (2^-4 relative for
 * E4M3, 16 times bf16's step) in the next cast. The first step starts from identical weights: its loss
 * within 1e-5 and its gradient norm within 1e-4 relative on the emulated CUDA (on a real GPU, whose FP8 tensor
 * cores accumulate in about 14 bits, 1e-4 and 2e-3: see the test) (measured 0 and 5e-5, the latter with E4M3
 * gradients). Later steps compound such flips through AdamW: losses within 1e-3 and gradient norms within
 * 2e-2 relative (measured on the emulated CUDA, 2026-11-30, three steps: losses at most 6.3e-5 apart,
 * gradient norms 6.5e-3; a fourth step reached 8e-3 on the gradient norm).
 */
@Tag("cuda")
class CudaFp8Test {
    private static byte[] codes(CudaDevice dev, Tensor t) {
        ByteBuffer b = ByteBuffer.allocateDirect((int) t.numel()).order(ByteOrder.nativeOrder());
        dev.download(b, t);
        byte[] out = new byte[(int) t.numel()];
        b.get(out);
        return out;
    }

    @Test
    void castsAreBitExactOnEveryBf16PatternAndOnRandomFloats() {
        try (CudaDevice dev = CudaTests.deviceOrSkip(0)) {
            SplittableRandom r = new SplittableRandom(17);
            float[] x = new float[65536 + 65536];
            for (int i = 0; i < 65536; i++) {
                x[i] = Float.intBitsToFloat(i << 16);
                x[65536 + i] = Float.intBitsToFloat(r.nextInt());
            }
            Tensor src = TestDevices.tensor(dev, x, x.length);
            Kernels k = dev.kernels();
            for (float s : new float[] {1f, 37.25f, 0x1p-20f}) {
                Tensor scale = TestDevices.tensor(dev, new float[] {s}, 1);
                for (Fp8Format f : Fp8Format.values()) {
                    Tensor c = dev.allocate(MemoryKind.WORKSPACE, f.dtype(), x.length);
                    Tensor v = dev.allocate(MemoryKind.WORKSPACE, DType.F32, x.length);
                    k.castToFp8(c, src, x.length, f, scale, 0, null, 0);
                    k.castToFp8(v, src, x.length, f, scale, 0, null, 0);
                    byte[] got = codes(dev, c);
                    float[] values = TestDevices.read(dev, v);
                    for (int i = 0; i < x.length; i++) {
                        if (Float.isNaN(x[i])) {
                            // a NaN's payload after "* scale" is the processor's: x86 keeps it, an NVIDIA GPU
                            // returns the canonical 0x7fffffff (seen on the H200), so the E5M2 NaN codes differ;
                            // what is required is a NaN code of the format
                            assertTrue(Float.isNaN(f.decode(got[i] & 0xff)), f + " code " + (got[i] & 0xff) + " of NaN x " + s);
                            assertTrue(Float.isNaN(values[i]), f + " value of NaN x " + s);
                            continue;
                        }
                        int want = f.encode(x[i] * s);
                        if ((got[i] & 0xff) != want) {
                            assertEquals(Integer.toHexString(want), Integer.toHexString(got[i] & 0xff),
                                    f + " code of " + x[i] + " (bits " + Integer.toHexString(Float.floatToRawIntBits(x[i])) + ") x " + s);
                        }
                        if (Float.floatToIntBits(values[i]) != Float.floatToIntBits(f.decode(want))) {
                            assertEquals(f.decode(want), values[i], f + " value of " + x[i] + " x " + s);
                        }
                    }
                    dev.release(c);
                    dev.release(v);
                }
            }
        }
    }

    @Test
    void amaxAndScaleUpdatesAreTheCpuKernelsBitForBit() {
        int len = 5;
        int slots = 37;
        SplittableRandom r = new SplittableRandom(3);
        float[] history = new float[len * slots];
        for (int i = 0; i < history.length; i++) {
            int kind = r.nextInt(10);
            history[i] = kind == 0 ? 0f : kind == 1 ? Float.POSITIVE_INFINITY : kind == 2 ? Float.NaN : kind == 3 ? 1e-40f
                    : (float) Math.abs(r.nextGaussian() * Math.pow(2, r.nextInt(-30, 30)));
        }
        float[] scale = new float[slots];
        for (int i = 0; i < slots; i++) {
            scale[i] = (float) Math.pow(2, r.nextInt(-8, 8)) * 1.5f;
        }
        float[] x = new float[10_001];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) (r.nextGaussian() * 3);
        }
        x[77] = Float.NaN;
        x[5000] = -41.5f;
        try (CudaDevice cuda = CudaTests.deviceOrSkip(0); CpuDevice cpu = new CpuDevice()) {
            float[][] results = new float[2][];
            int at = 0;
            for (Device d : new Device[] {cuda, cpu}) {
                Kernels k = d.kernels();
                for (boolean useMax : new boolean[] {false, true}) {
                    Tensor h = TestDevices.tensor(d, history, len, slots);
                    Tensor s = TestDevices.tensor(d, scale, slots);
                    Tensor si = d.allocate(MemoryKind.WORKSPACE, DType.F32, slots);
                    k.fp8DelayedScaling(h, s, si, len, slots, 0, 20, useMax, 448f / 2);
                    k.fp8DelayedScaling(h, s, si, len, slots, 20, slots - 20, useMax, 57344f);
                    Tensor amax = TestDevices.tensor(d, new float[] {0f, 2f, 50f}, 3);
                    k.amax(TestDevices.tensor(d, x, x.length), x.length, amax, 1);
                    k.amax(TestDevices.tensor(d, x, x.length), x.length, amax, 2);
                    Tensor cs = d.allocate(MemoryKind.WORKSPACE, DType.F32, 3);
                    Tensor csi = d.allocate(MemoryKind.WORKSPACE, DType.F32, 3);
                    k.fp8ScaleFromAmax(amax, cs, csi, 0, 3, 448f);
                    float[] all = concat(TestDevices.read(d, h), TestDevices.read(d, s), TestDevices.read(d, si), TestDevices.read(d, amax),
                            TestDevices.read(d, cs), TestDevices.read(d, csi));
                    results[at] = results[at] == null ? all : concat(results[at], all);
                }
                at++;
            }
            assertEquals(results[1].length, results[0].length);
            for (int i = 0; i < results[0].length; i++) {
                assertEquals(Float.floatToIntBits(results[1][i]), Float.floatToIntBits(results[0][i]),
                        "element " + i + ": CUDA " + results[0][i] + ", CPU " + results[1][i]);
            }
            int amaxAt = len * slots + 2 * slots; // after the history, scales and inverses of the first block
            assertEquals(41.5f, results[0][amaxAt + 1], "amax of slot 1: max(2, max |x|), NaN ignored");
            assertEquals(50f, results[0][amaxAt + 2], "amax of slot 2 keeps its larger value");
        }
    }

    static double[] train(Device device, String family, Precision p, Fp8Recipe recipe, int steps) throws Exception {
        try (device) {
            ModelConfig cfg = org.sparkatron.precision.Fp8TrainingTest.tiny(family);
            Transformer m = new Transformer(cfg, new RankContext(device, TensorParallel.none(), p, recipe));
            m.initialize(3);
            MarkovCorpus lang = new MarkovCorpus(cfg.vocabSize(), 4, 1234);
            Trainer tr = new Trainer(m, PackedSamples.perSequence(lang.generate(64, 33, 1), 0),
                    Trainer.Options.defaults(2, LrSchedule.constant(3e-3)));
            double[] out = new double[2 * steps];
            for (int s = 0; s < steps; s++) {
                Trainer.StepMetrics sm = tr.step();
                assertFalse(sm.skipped(), "no skipped step");
                out[2 * s] = sm.loss();
                out[2 * s + 1] = sm.gradNorm();
            }
            tr.close();
            m.close();
            return out;
        }
    }

    /** The smallest GPT-2 the FP8 path takes: 2 layers, width 32, 2 heads of 16, MLP 128, vocabulary 64. */
    static ModelConfig smallest() throws Exception {
        return ModelConfig.fromJson(new com.fasterxml.jackson.databind.ObjectMapper().readTree(
                "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":32,\"n_head\":2,\"n_positions\":16,\"vocab_size\":64}"));
    }

    /** Losses of {@code steps} steps of the demo task (Fp8TrainingTest's schedule), batches of 4 x 16 tokens. */
    static double[] demoLosses(Device device, ModelConfig cfg, Precision p, Fp8Recipe recipe, int steps) {
        try (device) {
            Transformer m = new Transformer(cfg, new RankContext(device, TensorParallel.none(), p, recipe));
            m.initialize(3);
            MarkovCorpus lang = new MarkovCorpus(cfg.vocabSize(), 4, 1234);
            Trainer tr = new Trainer(m, PackedSamples.perSequence(lang.generate(1000, 17, 1), 0),
                    Trainer.Options.defaults(4, new LrSchedule(3e-3, 3e-4, 20, steps)));
            double[] losses = new double[steps];
            for (int s = 0; s < steps; s++) {
                Trainer.StepMetrics sm = tr.step();
                assertFalse(sm.skipped(), "no skipped step");
                losses[s] = sm.loss();
            }
            tr.close();
            m.close();
            return losses;
        }
    }

    /**
     * Convergence parity on the CUDA device (issue 17): 200 steps of the demo task in FP8 (Megatron's default
     * recipe: hybrid formats, delayed scaling, history 1, most_recent) against the same run in bf16, both on the
     * CUDA device, from the same weights and batches. Every step runs fp8.cu's casts, amaxes and transposes,
     * cuBLASLt's FP8 GEMMs and the delayed-scaling update; the model is the smallest the FP8 path takes (every
     * GEMM dimension a multiple of 16, 64-token micro-batches), so that 400 emulated steps stay near two minutes.
     * Bounds as in {@code Fp8TrainingTest} (the CPU device's 200-step parity), for the same reasons: FP8's
     * 3-bit mantissa makes single steps differ, the curves must not; the mean of the last 20 losses within 0.01
     * nats of bf16's, every 20-step mean within 0.02, the curves not identical, and the run learning. Measured
     * (emulated CUDA, 2026-11-30): see docs/precision.md.
     */
    @Test
    void fp8LossesTrackBf16Over200StepsOnTheDevice() throws Exception {
        CudaTests.deviceOrSkip(0).close();
        int steps = 200;
        ModelConfig cfg = smallest();
        double[] bf16 = demoLosses(new CudaDevice(0), cfg, Precision.BF16, null, steps);
        double[] fp8 = demoLosses(new CudaDevice(0), cfg, Precision.FP8, org.sparkatron.precision.Fp8TrainingTest.recipe(""), steps);
        boolean differs = false;
        for (int i = 0; i < steps; i++) {
            differs |= fp8[i] != bf16[i];
        }
        StringBuilder curve = new StringBuilder();
        double worst = 0;
        for (int w = 0; w < steps; w += 20) {
            double a = mean(fp8, w, w + 20);
            double b = mean(bf16, w, w + 20);
            worst = Math.max(worst, Math.abs(a - b));
            curve.append(String.format(java.util.Locale.ROOT, " %.4f/%.4f", a, b));
        }
        double endGap = Math.abs(mean(fp8, steps - 20, steps) - mean(bf16, steps - 20, steps));
        String what = "20-step means fp8/bf16:" + curve + "; last-20 gap " + endGap + ", largest 20-step gap " + worst;
        System.out.println("CudaFp8Test 200-step parity on the CUDA device: " + what);
        assertTrue(differs, "fp8 and bf16 runs are identical: fp8 is not on");
        assertTrue(mean(fp8, steps - 20, steps) < fp8[0] / 2, "fp8 learns: " + what);
        assertTrue(endGap <= 0.01, what);
        assertTrue(worst <= 0.02, what);
    }

    /** The memory report (measured and predicted bytes per kind) after two steps of {@code p} on the CUDA device. */
    private static com.fasterxml.jackson.databind.JsonNode memoryAfterTwoSteps(ModelConfig cfg, Precision p) throws Exception {
        try (CudaDevice device = CudaTests.deviceOrSkip(0)) {
            Transformer m = new Transformer(cfg, new RankContext(device, TensorParallel.none(), p,
                    p == Precision.FP8 ? Fp8Recipe.defaults() : null));
            m.initialize(3);
            Trainer tr = new Trainer(m, PackedSamples.perSequence(new MarkovCorpus(cfg.vocabSize(), 4, 1234).generate(64, 33, 1), 0),
                    Trainer.Options.defaults(2, LrSchedule.constant(3e-3)));
            tr.step();
            tr.step();
            String report = tr.memoryReport();
            tr.close();
            m.close();
            return new com.fasterxml.jackson.databind.ObjectMapper().readTree(report);
        }
    }

    /**
     * MemoryEstimate's FP8 terms against the CUDA device's measured bytes: per memory kind, what fp8 adds to the
     * same model in bf16 (the FP8 weight copies, the saved FP8 inputs, the gradient operand, the recipe state and
     * the backward's three transpose scratch buffers, all 1-byte codes) equals what the estimate adds. The
     * difference isolates the FP8 buffers: the CUDA kernels' other scratch (norm partials, reductions) is the same
     * in both runs and not part of the estimate (whose CPU attention scratch, unused here, makes it an upper bound).
     */
    @ParameterizedTest(name = "{0}")
    @CsvSource({"gpt2", "llama"})
    void memoryEstimateMatchesTheFp8BuffersOnTheDevice(String family) throws Exception {
        ModelConfig cfg = org.sparkatron.precision.Fp8TrainingTest.tiny(family);
        com.fasterxml.jackson.databind.JsonNode bf16 = memoryAfterTwoSteps(cfg, Precision.BF16);
        com.fasterxml.jackson.databind.JsonNode fp8 = memoryAfterTwoSteps(cfg, Precision.FP8);
        for (MemoryKind kind : MemoryKind.values()) {
            String n = kind.name().toLowerCase(java.util.Locale.ROOT);
            long measured = fp8.get(n).asLong() - bf16.get(n).asLong();
            long predicted = fp8.get(n + "_predicted").asLong() - bf16.get(n + "_predicted").asLong();
            assertEquals(predicted, measured, family + " " + n + ": bytes fp8 adds, predicted vs measured; bf16 " + bf16 + ", fp8 " + fp8);
        }
        assertTrue(fp8.get("workspace").asLong() > bf16.get("workspace").asLong(), "fp8 adds workspace");
    }

    private static double mean(double[] a, int from, int to) {
        double s = 0;
        for (int i = from; i < to; i++) {
            s += a[i];
        }
        return s / (to - from);
    }

    @ParameterizedTest(name = "{0} [{1}]")
    @CsvSource({"gpt2, fp8_amax_history_len=4 fp8_amax_compute_algo=max", "llama, fp8_format=e4m3 fp8_recipe=tensorwise"})
    void fp8StepsMatchTheCpuDevice(String family, String spec) throws Exception {
        CudaDevice cuda = CudaTests.deviceOrSkip(0);
        Fp8Recipe r = org.sparkatron.precision.Fp8TrainingTest.recipe(spec);
        double[] gpu = train(cuda, family, Precision.FP8, r, 3);
        double[] cpu = train(new CpuDevice(), family, Precision.FP8, r, 3);
        StringBuilder seen = new StringBuilder();
        for (int i = 0; i < cpu.length; i += 2) {
            seen.append(String.format(java.util.Locale.ROOT, " %.6f/%.6f (%.6f/%.6f)", gpu[i], cpu[i], gpu[i + 1], cpu[i + 1]));
        }
        System.out.println("CudaFp8Test " + family + " [" + spec + "] losses (grad norms) cuda/cpu:" + seen);
        // step 1 on a real GPU: its FP8 tensor cores accumulate in about 14 bits (TestDevices.fp8AccumulationSlack),
        // not fp32, so a few E5M2 gradient codes flip against the CPU's: measured on the H200 1.7e-5 / 2.7e-5
        // (losses) and 5.8e-4 / 5e-7 (norms); the emulated CUDA accumulates like the CPU (measured 0 and 5e-5)
        boolean gpu1 = TestDevices.realGpu();
        for (int i = 0; i < cpu.length; i++) {
            String what = (i % 2 == 0 ? "loss" : "grad norm") + " of step " + (i / 2 + 1);
            double rtol = i < 2 ? (i == 0 ? (gpu1 ? 1e-4 : 1e-5) : (gpu1 ? 2e-3 : 1e-4)) : (i % 2 == 0 ? 1e-3 : 2e-2);
            assertEquals(cpu[i], gpu[i], rtol * Math.abs(cpu[i]), family + " fp8 " + what + ":" + seen);
        }
        assertTrue(gpu[0] > gpu[gpu.length - 2], "the CUDA run learns:" + seen);
    }

    private static float[] concat(float[]... parts) {
        int n = 0;
        for (float[] p : parts) {
            n += p.length;
        }
        float[] out = new float[n];
        int at = 0;
        for (float[] p : parts) {
            System.arraycopy(p, 0, out, at, p.length);
            at += p.length;
        }
        return out;
    }
}
