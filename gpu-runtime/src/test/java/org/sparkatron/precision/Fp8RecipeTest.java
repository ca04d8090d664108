package org.sparkatron.precision;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayDeque;
import java.util.Deque;
import java.util.HashMap;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.Test;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One FP8 linear layer over several passes, against a hand computation of the recipe: the scales a pass
 * uses come from the amaxes of the earlier passes (delayed: {@code fp8Max / 2^margin / amax} over the
 * window, or the most recent), or from the tensor itself (tensorwise); the layer's output, input gradient and
 * weight gradient are the products of operands quantised with exactly those scales. The inputs are scaled
 * by a different factor each pass, so a scale taken from the wrong pass quantises differently and changes
 * the results far beyond the tolerance (one bf16 rounding of the outputs, 2^-8 relative, plus fp32
 * accumulation).
 */
class Fp8RecipeTest {
    private static final int N = 32;
    private static final int IN = 16;
    private static final int OUT = 32;
    private static final float[] FACTORS = {1f, 16f, 0.25f, 4f, 0.0625f, 2f};

    private static float[] gaussian(SplittableRandom r, int n, double std) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = HalfFloats.roundToBf16((float) (r.nextGaussian() * std)); // bf16 values, as the model hands them over
        }
        return a;
    }

    private static float amax(float[] a) {
        float m = 0;
        for (float v : a) {
            m = Math.max(m, Math.abs(v));
        }
        return m;
    }

    private static float[] times(float[] a, float f) {
        float[] b = new float[a.length];
        for (int i = 0; i < a.length; i++) {
            b[i] = a[i] * f; // powers of two: exact, still bf16 values
        }
        return b;
    }

    /** The delayed-scaling scale for the next pass from the amaxes seen (newest last), or the tensor's own. */
    private static float expectedScale(Fp8Recipe r, Deque<Float> seen, float current, float fp8Max, float previous) {
        float scaled = fp8Max * (float) Math.pow(2, -r.margin());
        if (r.scaling() == Fp8Recipe.Scaling.TENSORWISE) {
            return fp8Max / current;
        }
        if (seen.isEmpty()) {
            return previous;
        }
        float a = r.amaxComputeAlgo() == Fp8Recipe.AmaxAlgo.MOST_RECENT ? seen.peekLast()
                : (float) seen.stream().mapToDouble(Float::doubleValue).max().orElse(0);
        return scaled / a;
    }

    private static double[] quant(float[] a, float scale, Fp8Format f) {
        double[] q = new double[a.length];
        float inv = 1f / scale;
        for (int i = 0; i < a.length; i++) {
            q[i] = (double) f.round(a[i] * scale) * inv;
        }
        return q;
    }

    @ParameterizedTest(name = "{0} {1} history {2} {3} margin {4}")
    @CsvSource({"hybrid, delayed, 1, most_recent, 0", "hybrid, delayed, 3, max, 1", "e4m3, delayed, 4, most_recent, 2",
        "hybrid, tensorwise, 1, max, 0", "e4m3, tensorwise, 1, max, 0"})
    void scalesAndResultsFollowTheRecipePassByPass(String format, String recipe, int len, String algo, int margin) {
        Map<String, String> o = new HashMap<>();
        o.put("fp8_format", format);
        o.put("fp8_recipe", recipe);
        o.put("fp8_amax_history_len", "" + len);
        o.put("fp8_amax_compute_algo", algo);
        o.put("fp8_margin", "" + margin);
        Fp8Recipe r = Fp8Recipe.parse(o::get);
        Device d = TestDevices.create();
        RankContext ctx = new RankContext(d, TensorParallel.none(), Precision.FP8, r);
        Fp8State state = new Fp8State(ctx, r, 1);
        Fp8Linear layer = new Fp8Linear(ctx, state, 0, "test", IN, OUT);
        layer.prepare(N);
        SplittableRandom rnd = new SplittableRandom(11);
        float[] x0 = gaussian(rnd, N * IN, 1);
        float[] w = gaussian(rnd, OUT * IN, 0.5);
        float[] dy0 = gaussian(rnd, N * OUT, 1e-3);
        Tensor wT = TestDevices.tensor(d, w, OUT, IN);
        Tensor xT = d.allocate(MemoryKind.WORKSPACE, DType.F32, N, IN);
        Tensor dyT = d.allocate(MemoryKind.WORKSPACE, DType.F32, N, OUT);
        Tensor y = d.allocate(MemoryKind.WORKSPACE, DType.F32, N, OUT);
        Tensor dx = d.allocate(MemoryKind.WORKSPACE, DType.F32, N, IN);
        Tensor dw = d.allocate(MemoryKind.WORKSPACE, DType.F32, OUT, IN);
        Deque<Float> seenX = new ArrayDeque<>();
        Deque<Float> seenW = new ArrayDeque<>();
        Deque<Float> seenDy = new ArrayDeque<>();
        float sx = 1;
        float sw = 1;
        float sdy = 1;
        Fp8Format bwd = r.format().backward();
        for (int p = 0; p < FACTORS.length; p++) {
            float[] x = times(x0, FACTORS[p]);
            float[] dy = times(dy0, 1 / FACTORS[p]);
            sx = expectedScale(r, seenX, amax(x), 448f, sx);
            sw = expectedScale(r, seenW, amax(w), 448f, sw);
            sdy = expectedScale(r, seenDy, amax(dy), bwd.max(), sdy);
            TestDevices.write(d, xT, x);
            TestDevices.write(d, dyT, dy);
            d.kernels().zero(dw);
            state.beginPass(true);
            layer.forward(y, xT, wT, null, N);
            layer.backward(dx, false, dw, null, dyT);
            if (r.scaling() == Fp8Recipe.Scaling.TENSORWISE) { // the scales this pass used, before anything changes them
                float[] s = TestDevices.read(d, state.scale());
                assertEquals(sx, s[state.xSlot(0)], "pass " + (p + 1) + " input scale");
                assertEquals(sw, s[state.wSlot(0)], "pass " + (p + 1) + " weight scale");
                assertEquals(sdy, s[state.dySlot(0)], "pass " + (p + 1) + " gradient scale");
            }
            state.finishPass();
            double[] xq = quant(x, sx, Fp8Format.E4M3);
            double[] wq = quant(w, sw, Fp8Format.E4M3);
            double[] dq = quant(dy, sdy, bwd);
            double[] ry = new double[N * OUT];
            double[] rdx = new double[N * IN];
            double[] rdw = new double[OUT * IN];
            double[] rdwAbs = new double[OUT * IN]; // sum |a b| per weight gradient: a real GPU's FP8 accumulation slack
            for (int i = 0; i < N; i++) {
                for (int o2 = 0; o2 < OUT; o2++) {
                    for (int j = 0; j < IN; j++) {
                        ry[i * OUT + o2] += xq[i * IN + j] * wq[o2 * IN + j];
                        rdx[i * IN + j] += dq[i * OUT + o2] * wq[o2 * IN + j];
                        rdw[o2 * IN + j] += dq[i * OUT + o2] * xq[i * IN + j];
                        rdwAbs[o2 * IN + j] += Math.abs(dq[i * OUT + o2] * xq[i * IN + j]);
                    }
                }
            }
            String at = r + " pass " + (p + 1);
            near(ry, TestDevices.read(d, y), 0x1p-8, at + " output");
            near(rdx, TestDevices.read(d, dx), 0x1p-8, at + " dx");
            float[] gotDw = TestDevices.read(d, dw);
            double maxDw = 0;
            for (double v : rdw) {
                maxDw = Math.max(maxDw, Math.abs(v));
            }
            for (int i = 0; i < rdw.length; i++) { // fp32: 1e-5 of the largest, plus the GPU's FP8 accumulation slack
                double tol = 1e-5 * maxDw + TestDevices.fp8AccumulationSlack(rdwAbs[i]) + 1e-30;
                assertTrue(Math.abs(rdw[i] - gotDw[i]) <= tol, at + " dw (fp32)[" + i + "]: " + gotDw[i] + " vs " + rdw[i] + " (tolerance " + tol + ")");
            }
            for (Object[] e : new Object[][] {{seenX, amax(x)}, {seenW, amax(w)}, {seenDy, amax(dy)}}) {
                @SuppressWarnings("unchecked")
                Deque<Float> q = (Deque<Float>) e[0];
                q.addLast((Float) e[1]);
                if (q.size() > len) {
                    q.removeFirst();
                }
            }
            if (r.scaling() == Fp8Recipe.Scaling.DELAYED) { // the scales the next pass will use
                float[] s = TestDevices.read(d, state.scale());
                assertEquals(expectedScale(r, seenX, 0, 448f, sx), s[state.xSlot(0)], at + ": next input scale");
                assertEquals(expectedScale(r, seenDy, 0, bwd.max(), sdy), s[state.dySlot(0)], at + ": next gradient scale");
                float[] si = TestDevices.read(d, state.scaleInv());
                assertEquals(1f / s[state.xSlot(0)], si[state.xSlot(0)]);
            }
        }
        layer.close();
        state.close();
        d.close();
    }

    /** Each element within {@code rel} of the largest reference magnitude. */
    private static void near(double[] ref, float[] got, double rel, String what) {
        double max = 0;
        for (double v : ref) {
            max = Math.max(max, Math.abs(v));
        }
        for (int i = 0; i < ref.length; i++) {
            assertTrue(Math.abs(ref[i] - got[i]) <= rel * max + 1e-30, what + "[" + i + "]: " + got[i] + " vs " + ref[i]);
        }
    }

    @Test
    void forwardOnlyPassesLeaveTheDelayedStateAlone() {
        Fp8Recipe r = Fp8Recipe.defaults();
        Device d = TestDevices.create();
        RankContext ctx = new RankContext(d, TensorParallel.none(), Precision.FP8, r);
        Fp8State state = new Fp8State(ctx, r, 1);
        Fp8Linear layer = new Fp8Linear(ctx, state, 0, "test", IN, OUT);
        Tensor x = TestDevices.tensor(d, gaussian(new SplittableRandom(2), N * IN, 3), N, IN);
        Tensor w = TestDevices.tensor(d, gaussian(new SplittableRandom(3), OUT * IN, 3), OUT, IN);
        Tensor y = d.allocate(MemoryKind.WORKSPACE, DType.F32, N, OUT);
        state.beginPass(false);
        layer.forward(y, x, w, null, N);
        float[] h = TestDevices.read(d, state.history());
        for (float v : h) {
            assertEquals(0f, v, "no amax recorded by a forward-only pass");
        }
        d.close();
    }

    @Test
    void optionsAreParsedWithMegatronsNamesAndBadValuesRefusedNamingTheKey() {
        Fp8Recipe def = Fp8Recipe.parse(k -> null);
        assertEquals(Fp8Recipe.defaults(), def);
        assertEquals(Fp8Recipe.Format.HYBRID, def.format());
        assertEquals(Fp8Recipe.Scaling.DELAYED, def.scaling());
        assertEquals(1, def.amaxHistoryLen());
        assertEquals(Fp8Recipe.AmaxAlgo.MOST_RECENT, def.amaxComputeAlgo());
        assertEquals(Fp8Recipe.Scaling.TENSORWISE, Fp8Recipe.parse(Map.of("fp8_recipe", "current")::get).scaling());
        Map<String, String> bad = Map.of("fp8_format", "e5m2");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Fp8Recipe.parse(bad::get));
        assertEquals("fp8_format must be one of e4m3, hybrid, got 'e5m2'", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Fp8Recipe.parse(Map.of("fp8_amax_history_len", "0")::get));
        assertEquals("fp8_amax_history_len must be >= 1, got 0", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Fp8Recipe.parse(Map.of("fp8_margin", "x")::get));
        assertEquals("fp8_margin must be an integer, got 'x'", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Fp8Recipe.parse(Map.of("fp8_recipe", "mxfp8")::get));
        assertTrue(e.getMessage().startsWith("fp8_recipe must be one of current, delayed, tensorwise"), e.getMessage());
        Fp8Recipe firstLast = Fp8Recipe.parse(Map.of("first_last_layers_bf16", "true", "num_layers_at_end_in_bf16", "2")::get);
        assertTrue(!firstLast.fp8Layer(0, 6) && firstLast.fp8Layer(1, 6) && firstLast.fp8Layer(3, 6) && !firstLast.fp8Layer(4, 6));
        e = assertThrows(IllegalArgumentException.class, () -> firstLast.validateFor(3));
        assertEquals("first_last_layers_bf16 keeps 1 + 2 of the model's 3 layers in bf16: no layer is left in fp8", e.getMessage());
        assertEquals(Fp8Recipe.parse(def.asMap()::get), def, "asMap round-trips");
    }

    @Test
    void gpusBeforeAdaAreRefused() {
        assertEquals(null, Fp8Recipe.unsupportedOn("cuda:0", "NVIDIA H100", 9, 0));
        assertEquals(null, Fp8Recipe.unsupportedOn("cuda:0", "NVIDIA L4", 8, 9));
        assertEquals("precision fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); cuda:1 (NVIDIA A100-SXM4-80GB)"
                + " is sm_80: use precision bf16", Fp8Recipe.unsupportedOn("cuda:1", "NVIDIA A100-SXM4-80GB", 8, 0));
    }
}
