package org.sparkatron.precision;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The FP8 kernels of {@link Kernels} on the suite's device (the CPU device, the strict one, and the CUDA device
 * over the emulated CUDA: there FP8 operands are codes and the GEMMs cuBLASLt's FP8 GEMMs): casts
 * against {@link Fp8Format} (itself checked against ml_dtypes in {@link Fp8FormatTest}), the amax with NaN
 * ignored, both scale computations against Transformer Engine's rules written out here, and the FP8 GEMMs
 * against a double-precision product of the dequantised operands (fp32 accumulation over K <= 64: relative
 * error within 1e-5 of the largest output; on a real GPU plus the FP8 tensor cores' accumulation slack,
 * {@link TestDevices#fp8AccumulationSlack}).
 */
class Fp8KernelsTest {
    private final Device d = TestDevices.create();
    private final Kernels k = d.kernels();

    @AfterEach
    void close() {
        d.close();
    }

    private Tensor t(float... v) {
        return TestDevices.tensor(d, v, v.length);
    }

    @Test
    void castsAreTheFormatsEncodeOfTheScaledValueWithTheAmaxFused() {
        SplittableRandom r = new SplittableRandom(1);
        float[] x = new float[999];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) (r.nextGaussian() * Math.pow(2, r.nextInt(-12, 12)));
        }
        x[3] = Float.NaN;
        x[4] = 1e9f; // saturates
        Tensor src = t(x);
        Tensor scale = t(0.5f, 37.25f);
        for (Fp8Format f : Fp8Format.values()) {
            Tensor codes = d.allocate(MemoryKind.WORKSPACE, f.dtype(), x.length);
            Tensor values = d.allocate(MemoryKind.WORKSPACE, DType.F32, x.length);
            Tensor amax = d.zeros(MemoryKind.WORKSPACE, DType.F32, 3);
            k.castToFp8(codes, src, x.length, f, scale, 1, amax, 2);
            k.castToFp8(values, src, x.length, f, scale, 1, null, 0);
            ByteBuffer b = ByteBuffer.allocateDirect(x.length).order(ByteOrder.nativeOrder());
            d.download(b, codes);
            float[] v = TestDevices.read(d, values);
            float m = 0;
            for (int i = 0; i < x.length; i++) {
                int expected = f.encode(x[i] * 37.25f);
                if (Float.isNaN(x[i])) {
                    // NaN * scale keeps x86's payload (0x7fc00000: E5M2 0x7e) but is the canonical 0x7fffffff on
                    // NVIDIA GPUs (E5M2 0x7f, seen on the H200): the code must be a NaN of the format, not one code
                    assertTrue(Float.isNaN(f.decode(b.get(i) & 0xff)), f + " element " + i + ": NaN cast to a non-NaN code " + (b.get(i) & 0xff));
                    assertTrue(Float.isNaN(v[i]), f + " value " + i + " of NaN");
                    continue;
                }
                assertEquals(expected, b.get(i) & 0xff, f + " element " + i + " = " + x[i]);
                assertEquals(Float.floatToIntBits(f.decode(expected)), Float.floatToIntBits(v[i]), f + " value " + i);
                m = Float.isNaN(x[i]) ? m : Math.max(m, Math.abs(x[i]));
            }
            assertArrayEquals(new float[] {0, 0, m}, TestDevices.read(d, amax), "the fused amax, NaN ignored, other slots untouched");
        }
    }

    @Test
    void amaxKeepsTheMaximumAcrossCallsAndIgnoresNaN() {
        Tensor amax = d.zeros(MemoryKind.WORKSPACE, DType.F32, 2);
        k.amax(t(1f, -7.5f, Float.NaN, 3f), 4, amax, 1);
        k.amax(t(-2f, 6f), 2, amax, 1);
        k.amax(t(Float.NaN), 1, amax, 0);
        assertArrayEquals(new float[] {0f, 7.5f}, TestDevices.read(d, amax));
        k.amax(t(-9f, 1f, 100f), 2, amax, 1); // count 2: the third element is outside
        assertArrayEquals(new float[] {0f, 9f}, TestDevices.read(d, amax));
    }

    @Test
    void currentScalingFollowsComputeScaleFromAmax() {
        float[] amaxes = {2f, 0f, Float.POSITIVE_INFINITY, Float.NaN, 1e-39f, 448f, 3e-3f};
        Tensor amax = t(amaxes);
        Tensor scale = d.allocate(MemoryKind.WORKSPACE, DType.F32, amaxes.length);
        Tensor inv = d.allocate(MemoryKind.WORKSPACE, DType.F32, amaxes.length);
        k.fill(scale, 5f);
        k.fp8ScaleFromAmax(amax, scale, inv, 0, amaxes.length, 448f);
        float[] s = TestDevices.read(d, scale);
        float[] si = TestDevices.read(d, inv);
        float[] expected = {224f, 1f, 1f, 1f, Float.MAX_VALUE, 1f, 448f / 3e-3f};
        assertArrayEquals(expected, s);
        for (int i = 0; i < s.length; i++) {
            assertEquals(1f / expected[i], si[i], "scale_inv " + i);
        }
    }

    /**
     * Delayed scaling, written out by hand for a history of 3 and the amax sequence 2, 8, 0, 1, 0.5 on slot 0,
     * slot 1 starting from scale 4 with only zero amaxes (never rolls, keeps its scale).
     */
    @Test
    void delayedScalingRollsTheHistoryAndScalesFromTheWindow() {
        int len = 3;
        int slots = 2;
        float[] seq = {2f, 8f, 0f, 1f, 0.5f};
        // windows of the max algorithm: {2}, {2, 8}, (pass 3: amax 0, no roll, the scale stays), {2, 8, 1}, {8, 1, 0.5}
        float[] maxAlgo = {2f, 8f, 8f, 8f, 8f};
        float[] recentAlgo = {2f, 8f, 8f, 1f, 0.5f}; // pass 3 (amax 0) keeps the scale of pass 2
        for (boolean useMax : new boolean[] {true, false}) {
            Tensor history = d.zeros(MemoryKind.WORKSPACE, DType.F32, len, slots);
            Tensor scale = t(1f, 4f);
            Tensor inv = t(1f, 0.25f);
            float scaledMax = 448f * 0.5f; // margin 1
            for (int p = 0; p < seq.length; p++) {
                TestDevices.write(d, history.slice(0, 1), new float[] {seq[p]}); // this pass's amax in row 0
                k.fp8DelayedScaling(history, scale, inv, len, slots, 0, slots, useMax, scaledMax);
                float[] s = TestDevices.read(d, scale);
                float amax = (useMax ? maxAlgo : recentAlgo)[p];
                assertEquals(scaledMax / amax, s[0], (useMax ? "max" : "most_recent") + " pass " + (p + 1));
                assertEquals(1f / (scaledMax / amax), TestDevices.read(d, inv)[0]);
                assertEquals(4f, s[1], "a slot whose amax stays 0 keeps its scale");
                float[] h = TestDevices.read(d, history);
                assertEquals(0f, h[0], "row 0 is cleared for the next pass");
            }
            float[] h = TestDevices.read(d, history);
            // after the passes: newest entry last, the oldest first (row 0 cleared): [0, 1, 0.5] for slot 0
            assertArrayEquals(new float[] {0f, 0f, 1f, 0f, 0.5f, 0f}, h);
        }
    }

    @Test
    void delayedScalingKeepsTheScaleForNonFiniteAmaxAndCapsAnInfiniteScale() {
        Tensor history = d.zeros(MemoryKind.WORKSPACE, DType.F32, 1, 3);
        TestDevices.write(d, history, new float[] {Float.POSITIVE_INFINITY, Float.NaN, 1e-39f});
        Tensor scale = t(3f, 5f, 1f);
        Tensor inv = t(1 / 3f, 0.2f, 1f);
        k.fp8DelayedScaling(history, scale, inv, 1, 3, 0, 3, false, 448f);
        assertArrayEquals(new float[] {3f, 5f, Float.MAX_VALUE}, TestDevices.read(d, scale));
    }

    private static double[] dequant(float[] codesValues, float scaleInv) {
        double[] out = new double[codesValues.length];
        for (int i = 0; i < out.length; i++) {
            out[i] = (double) codesValues[i] * scaleInv;
        }
        return out;
    }

    /** The values an FP8 operand holds: F32 values as they are, or the decoded codes of an FP8 tensor. */
    private float[] operandValues(Tensor t) {
        if (t.dtype() == DType.F32) {
            return TestDevices.read(d, t);
        }
        Fp8Format f = Fp8Format.of(t.dtype());
        ByteBuffer b = ByteBuffer.allocateDirect((int) t.numel()).order(ByteOrder.nativeOrder());
        d.download(b, t);
        float[] v = new float[(int) t.numel()];
        for (int i = 0; i < v.length; i++) {
            v[i] = f.decode(b.get(i));
        }
        return v;
    }

    @Test
    void fp8GemmsAreTheDequantisedProducts() {
        int n = 48;
        int in = 64;
        int out = 32;
        SplittableRandom r = new SplittableRandom(5);
        float[] x = new float[n * in];
        float[] w = new float[out * in];
        float[] dy = new float[n * out];
        float[] bias = new float[out];
        for (float[] a : new float[][] {x, w, dy, bias}) {
            for (int i = 0; i < a.length; i++) {
                a[i] = (float) r.nextGaussian();
            }
        }
        Tensor scale = t(20f, 50f, 3000f);
        Tensor inv = t(1 / 20f, 1 / 50f, 1 / 3000f);
        Tensor x8 = d.allocate(MemoryKind.WORKSPACE, d.storageOf(DType.FP8_E4M3), n, in);
        Tensor w8 = d.allocate(MemoryKind.WORKSPACE, d.storageOf(DType.FP8_E4M3), out, in);
        Tensor dy8 = d.allocate(MemoryKind.WORKSPACE, d.storageOf(DType.FP8_E5M2), n, out);
        Tensor dyT = TestDevices.tensor(d, dy, n, out);
        k.castToFp8(x8, TestDevices.tensor(d, x, n, in), (long) n * in, Fp8Format.E4M3, scale, 0, null, 0);
        k.castToFp8(w8, TestDevices.tensor(d, w, out, in), (long) out * in, Fp8Format.E4M3, scale, 1, null, 0);
        k.castToFp8(dy8, dyT, (long) n * out, Fp8Format.E5M2, scale, 2, null, 0);
        double[] xq = dequant(operandValues(x8), 1 / 20f);
        double[] wq = dequant(operandValues(w8), 1 / 50f);
        double[] dq = dequant(operandValues(dy8), 1 / 3000f);

        Tensor y = d.allocate(MemoryKind.WORKSPACE, DType.F32, n, out);
        k.fp8LinearForward(y, x8, w8, inv, 0, 1, t(bias), n, in, out);
        double[] ref = new double[n * out];
        double[] refAbs = new double[n * out]; // sum |a b| of each output: the GPU's FP8 accumulation slack
        for (int i = 0; i < n; i++) {
            for (int o = 0; o < out; o++) {
                double s = bias[o];
                for (int j = 0; j < in; j++) {
                    s += xq[i * in + j] * wq[o * in + j];
                    refAbs[i * out + o] += Math.abs(xq[i * in + j] * wq[o * in + j]);
                }
                ref[i * out + o] = s;
            }
        }
        close(ref, refAbs, TestDevices.read(d, y), "forward");

        Tensor dx = d.allocate(MemoryKind.WORKSPACE, DType.F32, n, in);
        float[] dw0 = new float[out * in];
        java.util.Arrays.fill(dw0, 0.25f); // accumulates
        Tensor dw = TestDevices.tensor(d, dw0, out, in);
        Tensor db = d.zeros(MemoryKind.WORKSPACE, DType.F32, out);
        k.fp8LinearBackward(dx, false, dw, db, dyT, dy8, x8, w8, inv, 2, 0, 1, n, in, out);
        double[] rdx = new double[n * in];
        double[] rdw = new double[out * in];
        double[] rdb = new double[out];
        double[] rdxAbs = new double[n * in];
        double[] rdwAbs = new double[out * in];
        for (int i = 0; i < n; i++) {
            for (int o = 0; o < out; o++) {
                rdb[o] += dy[i * out + o]; // from the unquantised gradient
                for (int j = 0; j < in; j++) {
                    rdx[i * in + j] += dq[i * out + o] * wq[o * in + j];
                    rdw[o * in + j] += dq[i * out + o] * xq[i * in + j];
                    rdxAbs[i * in + j] += Math.abs(dq[i * out + o] * wq[o * in + j]);
                    rdwAbs[o * in + j] += Math.abs(dq[i * out + o] * xq[i * in + j]);
                }
            }
        }
        for (int i = 0; i < rdw.length; i++) {
            rdw[i] += 0.25;
        }
        close(rdx, rdxAbs, TestDevices.read(d, dx), "dx");
        close(rdw, rdwAbs, TestDevices.read(d, dw), "dw");
        close(rdb, new double[out], TestDevices.read(d, db), "db"); // db is a plain fp32 sum
    }

    /** Within 1e-5 of the largest output (fp32 accumulation), plus a real GPU's FP8 accumulation slack. */
    private static void close(double[] ref, double[] absSum, float[] got, String what) {
        double max = 0;
        for (double v : ref) {
            max = Math.max(max, Math.abs(v));
        }
        for (int i = 0; i < ref.length; i++) {
            double tol = 1e-5 * max + TestDevices.fp8AccumulationSlack(absSum[i]);
            assertTrue(Math.abs(ref[i] - got[i]) <= tol, what + "[" + i + "]: " + got[i] + " vs " + ref[i] + " (tolerance " + tol + ")");
        }
    }

    @Test
    void theCpuGemmRefusesRawCodes() {
        org.junit.jupiter.api.Assumptions.assumeTrue(d.storageOf(DType.FP8_E4M3) == DType.F32, "the CPU devices' FP8 storage");
        Tensor codes = d.allocate(MemoryKind.WORKSPACE, DType.FP8_E4M3, 16, 16);
        Tensor y = d.allocate(MemoryKind.WORKSPACE, DType.F32, 16, 16);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> k.fp8LinearForward(y, codes, codes, t(1f), 0, 0, null, 16, 16, 16));
        assertTrue(e.getMessage().contains("F32 tensors holding FP8 values"), e.getMessage());
    }

    @Test
    void aCodeGemmRefusesF32Operands() {
        org.junit.jupiter.api.Assumptions.assumeTrue(d.storageOf(DType.FP8_E4M3) != DType.F32, "devices that store FP8 codes");
        Tensor values = d.allocate(MemoryKind.WORKSPACE, DType.F32, 16, 16);
        Tensor y = d.allocate(MemoryKind.WORKSPACE, DType.F32, 16, 16);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> k.fp8LinearForward(y, values, values, t(1f), 0, 0, null, 16, 16, 16));
        assertTrue(e.getMessage().contains("FP8 codes"), e.getMessage());
    }
}
