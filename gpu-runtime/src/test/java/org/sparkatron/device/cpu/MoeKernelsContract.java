package org.sparkatron.device.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.device.cpu.Arrays32.random;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MoeKernels;
import org.sparkatron.device.MoeRouting;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The mixture-of-experts kernels of a device against plain double-precision references written here from the
 * contracts in {@link MoeKernels} (Mixtral's and Megatron's formulas); the router backward
 * against central finite differences (h = 1e-6 in double) of the objective it differentiates. Edge cases: every
 * token to one expert, top-k equal to the number of experts, experts with no tokens, capacity ties. Each device
 * runs it: {@link MoeKernelsTest} (the CPU device), {@code CudaMoeKernelsTest} (the CUDA device). Inputs are
 * built as host tensors and moved with {@link #on}; results come back with {@link #back}.
 *
 * <p>Tolerances: routing works in double per token and stores float (weights to 1e-6 relative); permutation
 * moves floats exactly; grouped GEMMs with K <= 24 to 1e-5; the router backward to 1e-5 against finite
 * differences of a double reference (the kernel rounds its output to float).
 */
public abstract class MoeKernelsContract {
    /** The kernels under test. */
    protected abstract Kernels kernels();

    /** Their mixture-of-experts kernels, the ones under test here. */
    private MoeKernels moe() {
        return kernels().moe();
    }

    /** The device's copy of a host tensor. */
    protected abstract Tensor on(Tensor host);

    /** A host copy of a device tensor (synchronises). */
    protected abstract Tensor back(Tensor device);

    private Tensor f32(double[] data, int... shape) {
        return on(Arrays32.f32(data, shape));
    }

    private Tensor i32(int[] data, int... shape) {
        return on(Arrays32.i32(data, shape));
    }

    private double[] read(Tensor t) {
        return Arrays32.read(back(t));
    }

    private double scalar(Tensor acc, int slot) {
        return back(acc).hostBuffer().getDouble(8 * slot);
    }

    private Tensor f64(int n) {
        return on(Tensor.allocateHost(DType.F64, n));
    }

    private static double[] scores(double[] l, int t, int e, boolean sigmoid) {
        double[] s = new double[e];
        double max = Double.NEGATIVE_INFINITY;
        for (int i = 0; i < e; i++) {
            max = Math.max(max, l[t * e + i]);
        }
        double sum = 0;
        for (int i = 0; i < e; i++) {
            s[i] = sigmoid ? 1 / (1 + Math.exp(-l[t * e + i])) : Math.exp(l[t * e + i] - max);
            sum += s[i];
        }
        if (!sigmoid) {
            for (int i = 0; i < e; i++) {
                s[i] /= sum;
            }
        }
        return s;
    }

    /** The reference top-k: indices by decreasing score, ties to the lower index. */
    private static int[] topK(double[] s, int k) {
        Integer[] idx = new Integer[s.length];
        for (int i = 0; i < s.length; i++) {
            idx[i] = i;
        }
        java.util.Arrays.sort(idx, (a, b) -> s[a] != s[b] ? Double.compare(s[b], s[a]) : Integer.compare(a, b));
        int[] out = new int[k];
        for (int j = 0; j < k; j++) {
            out[j] = idx[j];
        }
        return out;
    }

    /** The weights of the reference routing given fixed choices. */
    private static double[] weights(double[] l, int[] experts, int n, int e, int k, MoeRouting r) {
        double[] p = new double[n * k];
        for (int t = 0; t < n; t++) {
            double[] s = scores(l, t, e, r.sigmoid());
            double top = 0;
            for (int j = 0; j < k; j++) {
                top += s[experts[t * k + j]];
            }
            for (int j = 0; j < k; j++) {
                p[t * k + j] = (r.normTopK() ? s[experts[t * k + j]] / top : s[experts[t * k + j]]) * r.scale();
            }
        }
        return p;
    }

    @ParameterizedTest(name = "n={0} e={1} k={2} sigmoid={3} norm={4}")
    @CsvSource({"7, 4, 2, false, true", "5, 8, 3, false, false", "6, 4, 4, false, true", "9, 6, 2, true, true", "3, 5, 1, true, false"})
    void routingMatchesTheReference(int n, int e, int kk, boolean sigmoid, boolean norm) {
        SplittableRandom rng = new SplittableRandom(n * 31 + e);
        double[] l = random(rng, n * e, 2);
        MoeRouting r = new MoeRouting(sigmoid, norm, sigmoid ? 2.5f : 1f);
        Tensor experts = i32(new int[n * kk], n, kk);
        Tensor probs = f32(new double[n * kk], n, kk);
        Tensor scores = f32(new double[n * e], n, e);
        moe().route(f32(l, n, e), experts, probs, scores, n, e, kk, r);
        int[] want = new int[n * kk];
        double[] aux = new double[n * e];
        for (int t = 0; t < n; t++) {
            double[] s = scores(l, t, e, sigmoid);
            System.arraycopy(topK(s, kk), 0, want, t * kk, kk);
            double all = java.util.Arrays.stream(s).sum();
            for (int i = 0; i < e; i++) {
                aux[t * e + i] = sigmoid ? s[i] / all : s[i];
            }
        }
        assertArrayEquals(want, ints(experts), "top-k choices");
        assertClose("weights", weights(l, want, n, e, kk, r), read(probs), 1e-7, 1e-6);
        assertClose("scores", aux, read(scores), 1e-7, 1e-6);
    }

    private int[] ints(Tensor t) {
        Tensor h = back(t);
        int[] out = new int[(int) h.numel()];
        h.ints().get(0, out);
        return out;
    }

    /** DeepSeek-V3's aux-loss-free routing: the bias chooses the k experts, the unbiased scores weigh them. */
    @ParameterizedTest(name = "n={0} e={1} k={2}")
    @CsvSource({"9, 6, 2", "5, 8, 3", "300, 8, 4"})
    void anExpertBiasChoosesButDoesNotWeigh(int n, int e, int kk) {
        SplittableRandom rng = new SplittableRandom(n * 5 + e);
        double[] l = random(rng, n * e, 2);
        double[] b = random(rng, e, 0.5);
        MoeRouting r = new MoeRouting(true, true, 2.5f);
        Tensor experts = i32(new int[n * kk], n, kk);
        Tensor probs = f32(new double[n * kk], n, kk);
        moe().route(f32(l, n, e), experts, probs, null, f32(b, e), n, e, kk, r);
        int[] want = new int[n * kk];
        for (int t = 0; t < n; t++) {
            double[] s = scores(l, t, e, true);
            double[] biased = new double[e];
            for (int i = 0; i < e; i++) {
                biased[i] = s[i] + b[i];
            }
            System.arraycopy(topK(biased, kk), 0, want, t * kk, kk);
        }
        assertArrayEquals(want, ints(experts), "top-k of score + bias");
        assertClose("weights from the unbiased scores", weights(l, want, n, e, kk, r), read(probs), 1e-7, 1e-6);
        int[] plain = new int[n * kk];
        for (int t = 0; t < n; t++) {
            System.arraycopy(topK(scores(l, t, e, true), kk), 0, plain, t * kk, kk);
        }
        boolean differs = !java.util.Arrays.equals(plain, want);
        assertEquals(true, differs, "the bias changed some choice (else this test would not test it)");
    }

    /** Megatron's get_updated_expert_bias: bias += rate * sign(mean - count); and the token tally it reads. */
    @Test
    void expertBiasMovesTowardsBalanceFromTheTally() {
        int e = 5;
        Tensor tally = on(Tensor.allocateHost(DType.F64, e));
        moe().countTokens(tally, i32(new int[] {3, 0, 2, 4, 1}, e), e);
        moe().countTokens(tally, i32(new int[] {1, 2, 0, 0, 1}, e), e); // totals 4 2 2 4 2: mean 2.8
        double[] got = doubles(tally);
        assertArrayEquals(new double[] {4, 2, 2, 4, 2}, got, 0, "counts accumulated");
        double[] b0 = {0.25, -0.5, 0, 1, 0.125};
        Tensor bias = f32(b0, e);
        moe().expertBiasUpdate(bias, tally, e, 0.01f);
        double[] want = new double[e];
        for (int i = 0; i < e; i++) {
            double c = new double[] {4, 2, 2, 4, 2}[i];
            want[i] = (float) ((float) b0[i] + Math.signum(2.8 - c) * 0.01f);
        }
        assertClose("bias moved by the rate towards balance", want, read(bias), 0, 0);
        assertArrayEquals(new double[e], doubles(tally), 0, "the tally is zeroed");
        moe().countTokens(tally, i32(new int[] {2, 2, 2, 2, 2}, e), e);
        moe().expertBiasUpdate(bias, tally, e, 0.01f);
        assertClose("balanced: no change", want, read(bias), 0, 0);
    }

    private double[] doubles(Tensor t) {
        Tensor h = back(t);
        double[] out = new double[(int) h.numel()];
        for (int i = 0; i < out.length; i++) {
            out[i] = h.hostBuffer().getDouble(8 * i);
        }
        return out;
    }

    /**
     * The router backward is the gradient of {@code sum dprobs . probs + sum_e auxGrad_e sum_t scores[t, e] +
     * zWeight sum_t lse_t^2} with the choices held fixed.
     */
    @ParameterizedTest(name = "e={0} k={1} sigmoid={2} norm={3}")
    @CsvSource({"4, 2, false, true", "6, 3, false, false", "4, 4, false, true", "5, 2, true, true", "5, 3, true, false"})
    void routerBackwardMatchesFiniteDifferences(int e, int kk, boolean sigmoid, boolean norm) {
        int n = 5;
        SplittableRandom rng = new SplittableRandom(e * 7 + kk);
        double[] l = random(rng, n * e, 1.5);
        double[] dp = random(rng, n * kk, 1);
        double[] ag = random(rng, e, 1);
        double zw = 0.3;
        MoeRouting r = new MoeRouting(sigmoid, norm, 1.5f);
        Tensor experts = i32(new int[n * kk], n, kk);
        moe().route(f32(l, n, e), experts, f32(new double[n * kk], n, kk), null, n, e, kk, r);
        int[] ex = ints(experts);
        Tensor dl = f32(new double[n * e], n, e);
        moe().routeBackward(dl, f32(dp, n, kk), f32(l, n, e), experts, f32(ag, e), (float) zw, n, e, kk, r);
        double[] fd = new double[n * e];
        double h = 1e-6;
        for (int i = 0; i < n * e; i++) {
            double[] up = l.clone();
            double[] dn = l.clone();
            up[i] += h;
            dn[i] -= h;
            fd[i] = (objective(up, ex, dp, ag, zw, n, e, kk, r) - objective(dn, ex, dp, ag, zw, n, e, kk, r)) / (2 * h);
        }
        assertClose("dlogits", fd, read(dl), 1e-5, 1e-5);
    }

    private static double objective(double[] l, int[] ex, double[] dp, double[] ag, double zw, int n, int e, int k, MoeRouting r) {
        double[] p = weights(l, ex, n, e, k, r);
        double v = 0;
        for (int i = 0; i < n * k; i++) {
            v += dp[i] * p[i];
        }
        for (int t = 0; t < n; t++) {
            double[] s = scores(l, t, e, r.sigmoid());
            double all = java.util.Arrays.stream(s).sum();
            double max = Double.NEGATIVE_INFINITY;
            for (int i = 0; i < e; i++) {
                v += ag[i] * (r.sigmoid() ? s[i] / all : s[i]);
                max = Math.max(max, l[t * e + i]);
            }
            double sum = 0;
            for (int i = 0; i < e; i++) {
                sum += Math.exp(l[t * e + i] - max);
            }
            double lse = max + Math.log(sum);
            v += zw * lse * lse;
        }
        return v;
    }

    @Test
    void auxAndZLossesAreMegatronsFormulas() {
        int n = 6;
        int e = 4;
        int kk = 2;
        SplittableRandom rng = new SplittableRandom(3);
        double[] l = random(rng, n * e, 1);
        Tensor logits = f32(l, n, e);
        Tensor experts = i32(new int[n * kk], n, kk);
        Tensor scores = f32(new double[n * e], n, e);
        moe().route(logits, experts, f32(new double[n * kk], n, kk), scores, n, e, kk, new MoeRouting(false, true, 1f));
        Tensor acc = f64(2);
        Tensor grad = f32(new double[e], e);
        moe().auxLoss(scores, experts, grad, acc, 0, n, e, kk, 0.5f, 2.0);
        moe().zLoss(logits, acc, 1, n, e, 3.0);
        int[] count = new int[e];
        for (int x : ints(experts)) {
            count[x]++;
        }
        double aux = 0;
        double z = 0;
        double[] wantGrad = new double[e];
        for (int i = 0; i < e; i++) {
            double col = 0;
            for (int t = 0; t < n; t++) {
                col += scores(l, t, e, false)[i];
            }
            aux += (double) e / (kk * n * n) * count[i] * col;
            wantGrad[i] = 0.5 * e / (kk * n * n) * count[i];
        }
        for (int t = 0; t < n; t++) {
            double s = 0;
            for (int i = 0; i < e; i++) {
                s += Math.exp(l[t * e + i]);
            }
            z += Math.log(s) * Math.log(s) / n;
        }
        assertEquals(2.0 * aux, scalar(acc, 0), 1e-6, "aux loss times its report weight");
        assertEquals(3.0 * z, scalar(acc, 1), 1e-6, "z-loss times its report weight");
        assertClose("aux gradient per expert", wantGrad, read(grad), 1e-8, 1e-6);
    }

    @Test
    void capacityKeepsTheHighestWeightsAndBreaksTiesByToken() {
        // 4 tokens, k = 1, all to expert 1; capacity 2: the two highest weights stay (token 2, then token 0 over
        // token 3 at the same weight: the lower token wins)
        int[] ex = {1, 1, 1, 1};
        double[] p = {0.5, 0.25, 0.75, 0.5};
        Tensor routed = i32(new int[4], 4, 1);
        Tensor probs = f32(p, 4, 1);
        Tensor acc = f64(1);
        moe().capacity(routed, probs, i32(ex, 4, 1), acc, 0, 4, 3, 1, 2, 1.0);
        assertArrayEquals(new int[] {1, -1, 1, -1}, ints(routed));
        assertClose("dropped weights are zero", new double[] {0.5, 0, 0.75, 0}, read(probs), 0, 0);
        assertEquals(2.0, scalar(acc, 0), "two assignments dropped");
    }

    @ParameterizedTest(name = "capacity={0}")
    @CsvSource({"0", "3"})
    void permuteAndCombineAreEachOthersAdjoints(int capacity) {
        int n = 5;
        int c = 3;
        int e = 4;
        int kk = 2;
        // expert 3 gets nothing; with capacity 3 expert 0 (4 assignments) has one dropped upstream (-1)
        int[] routed = {0, 1, 0, 2, 1, 0, capacity > 0 ? -1 : 0, 2, 2, 1};
        SplittableRandom rng = new SplittableRandom(5);
        double[] x = random(rng, n * c, 1);
        double[] p = random(rng, n * kk, 1);
        int rows = capacity > 0 ? e * capacity : (int) java.util.Arrays.stream(routed).filter(v -> v >= 0).count();
        Tensor out = f32(new double[rows * c], rows, c);
        Tensor map = i32(new int[n * kk], n, kk);
        Tensor counts = i32(new int[e], e);
        Tensor offsets = i32(new int[e + 1], e + 1);
        moe().permute(out, map, counts, offsets, f32(x, n, c), i32(routed, n, kk), n, c, e, kk, capacity);
        int[] cnt = new int[e];
        for (int v : routed) {
            if (v >= 0) {
                cnt[v]++;
            }
        }
        assertArrayEquals(cnt, ints(counts), "kept per expert (an expert with none included)");
        int[] off = ints(offsets);
        double[] o = read(out);
        int[] m = ints(map);
        for (int t = 0; t < n; t++) {
            for (int j = 0; j < kk; j++) {
                int g = routed[t * kk + j];
                if (g < 0) {
                    assertEquals(-1, m[t * kk + j]);
                    continue;
                }
                int row = m[t * kk + j];
                assertEquals(true, row >= off[g] && row < off[g] + cnt[g], "row inside its expert's block");
                for (int i = 0; i < c; i++) {
                    assertEquals(x[t * c + i], o[row * c + i], 0, "a copy of the token's row");
                }
            }
        }
        if (capacity > 0) {
            for (int g = 0; g < e; g++) {
                assertEquals(g * capacity, off[g]);
                for (int r = g * capacity + cnt[g]; r < (g + 1) * capacity; r++) {
                    for (int i = 0; i < c; i++) {
                        assertEquals(0, o[r * c + i], 0, "padding rows are zero");
                    }
                }
            }
        }
        // combine and its backward: <combine(y), d> = <y, dy> and dprobs = d/dp <combine(y), d>
        double[] y = random(rng, rows * c, 1);
        double[] d = random(rng, n * c, 1);
        Tensor comb = f32(new double[n * c], n, c);
        moe().unpermute(comb, f32(y, rows, c), map, f32(p, n, kk), n, c, kk);
        Tensor dy = f32(random(rng, rows * c, 9), rows, c); // garbage: the backward must overwrite every row
        Tensor dprobs = f32(new double[n * kk], n, kk);
        moe().unpermuteBackward(dy, dprobs, f32(d, n, c), f32(y, rows, c), map, f32(p, n, kk), rows, n, c, kk);
        double lhs = dot(read(comb), d);
        double rhs = dot(y, read(dy));
        assertEquals(lhs, rhs, 1e-5, "combine's backward is its adjoint");
        double[] wantDp = new double[n * kk];
        for (int t = 0; t < n; t++) {
            for (int j = 0; j < kk; j++) {
                int row = m[t * kk + j];
                for (int i = 0; row >= 0 && i < c; i++) {
                    wantDp[t * kk + j] += d[t * c + i] * y[row * c + i];
                }
            }
        }
        assertClose("dprobs", wantDp, read(dprobs), 1e-6, 1e-5);
        // permute's backward: <permute(x), z> = <x, permuteBackward(z)>
        double[] z = random(rng, rows * c, 1);
        Tensor dx = f32(new double[n * c], n, c);
        moe().permuteBackward(dx, f32(z, rows, c), map, n, c, kk);
        assertEquals(dot(o, z), dot(x, read(dx)), 1e-5, "permute's backward is its adjoint");
    }

    private static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }

    @Test
    void sortingChunksRoundTripsAndGivesOffsets() {
        int a = 3;
        int b = 2;
        int c = 2;
        int[] counts = {2, 0, 1, 3, 0, 2}; // (source, expert): some empty, a whole empty source for expert 0
        int rows = 8;
        double[] in = new double[rows * c];
        for (int i = 0; i < in.length; i++) {
            in[i] = i;
        }
        Tensor out = f32(new double[rows * c], rows, c);
        Tensor off = i32(new int[b + 1], b + 1);
        moe().sortChunks(out, off, f32(in, rows, c), i32(counts, a * b), a, b, c, false);
        assertArrayEquals(new int[] {0, 3, 8}, ints(off), "expert 0 has 2 + 1 + 0 rows, expert 1 0 + 3 + 2");
        // i-major rows: (0,0)=0,1 (0,1)=- (1,0)=2 (1,1)=3,4,5 (2,0)=- (2,1)=6,7; j-major: 0,1,2 | 3,4,5,6,7
        double[] want = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        assertClose("j-major", want, read(out), 0, 0);
        Tensor back = f32(new double[rows * c], rows, c);
        moe().sortChunks(back, null, out, i32(counts, a * b), a, b, c, true);
        assertClose("round trip", in, read(back), 0, 0);
        int[] counts2 = {1, 1, 1, 1, 1, 1};
        double[] in2 = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5};
        Tensor out2 = f32(new double[12], 6, 2);
        moe().sortChunks(out2, null, f32(in2, 6, 2), i32(counts2, 6), 3, 2, 2, false);
        assertClose("transposed blocks", new double[] {0, 0, 2, 2, 4, 4, 1, 1, 3, 3, 5, 5}, read(out2), 0, 0);
    }

    @Test
    void groupedLinearIsOneGemmPerGroupAndSkipsEmptyGroups() {
        int groups = 3;
        int in = 5;
        int outF = 4;
        int[] off = {0, 3, 3, 7}; // group 1 is empty
        int rows = 8;             // row 7 belongs to no group
        SplittableRandom rng = new SplittableRandom(11);
        double[] x = random(rng, rows * in, 1);
        double[] w = random(rng, groups * outF * in, 1);
        double[] dout = random(rng, rows * outF, 1);
        double[] initial = new double[rows * outF];
        initial[7 * outF] = 42;
        Tensor out = f32(initial, rows, outF);
        moe().groupedLinearForward(out, f32(x, rows, in), f32(w, groups, outF, in), i32(off, groups + 1), groups, in, outF);
        double[] want = new double[rows * outF];
        double[] wantDx = new double[rows * in];
        double[] wantDw = new double[groups * outF * in];
        for (int g = 0; g < groups; g++) {
            for (int r = off[g]; r < off[g + 1]; r++) {
                for (int o = 0; o < outF; o++) {
                    for (int i = 0; i < in; i++) {
                        want[r * outF + o] += x[r * in + i] * w[(g * outF + o) * in + i];
                        wantDx[r * in + i] += dout[r * outF + o] * w[(g * outF + o) * in + i];
                        wantDw[(g * outF + o) * in + i] += dout[r * outF + o] * x[r * in + i];
                    }
                }
            }
        }
        want[7 * outF] = 42; // untouched
        assertClose("grouped forward", want, read(out), 1e-5, 1e-5);
        Tensor dx = f32(new double[rows * in], rows, in);
        Tensor dw = f32(new double[groups * outF * in], groups, outF, in);
        moe().groupedLinearBackward(dx, dw, f32(dout, rows, outF), f32(x, rows, in), f32(w, groups, outF, in), i32(off, groups + 1),
                groups, in, outF);
        assertClose("grouped dx", wantDx, read(dx), 1e-5, 1e-5);
        assertClose("grouped dw (group 1 had no rows: zero)", wantDw, read(dw), 1e-5, 1e-5);
    }

    @Test
    void everyTokenToOneExpertAndTopKOfAllExperts() {
        int n = 4;
        int e = 3;
        double[] l = new double[n * e];
        for (int t = 0; t < n; t++) {
            l[t * e + 2] = 30; // expert 2 dominates every token
        }
        Tensor experts = i32(new int[n], n, 1);
        Tensor probs = f32(new double[n], n, 1);
        moe().route(f32(l, n, e), experts, probs, null, n, e, 1, new MoeRouting(false, true, 1f));
        assertArrayEquals(new int[] {2, 2, 2, 2}, ints(experts));
        assertClose("renormalised over one expert: weight 1", new double[] {1, 1, 1, 1}, read(probs), 0, 0);
        Tensor all = i32(new int[n * e], n, e);
        Tensor pAll = f32(new double[n * e], n, e);
        moe().route(f32(l, n, e), all, pAll, null, n, e, e, new MoeRouting(false, true, 1f));
        double[] pa = read(pAll);
        for (int t = 0; t < n; t++) {
            assertEquals(1.0, pa[t * e] + pa[t * e + 1] + pa[t * e + 2], 1e-6, "top-k of all experts: the softmax itself");
        }
    }
}
