package org.sparkatron.device.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.device.cpu.Arrays32.f32;
import static org.sparkatron.device.cpu.Arrays32.i32;
import static org.sparkatron.device.cpu.Arrays32.random;
import static org.sparkatron.device.cpu.Arrays32.read;

import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.Test;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Every CPU kernel against the double-precision {@link Reference}; every backward against central finite
 * differences of that reference.
 *
 * <p>Tolerances: inputs are float-representable values of order 1, so the only error is fp32 arithmetic.
 * Elementwise kernels are good to a few ulps (atol 1e-6 + rtol 1e-5). Reductions of length K in fp32
 * (GEMM, attention) accumulate about K * 6e-8 relative error: with K <= 100 here, atol/rtol 2e-5..1e-4.
 * Finite differences in double (h = 1e-6) are accurate to about 1e-9, far below those.
 */
class CpuKernelsTest {
    final CpuKernels k = create();

    /** The Vector API kernels; {@link ScalarCpuKernelsTest} runs every test again on the scalar loops. */
    CpuKernels create() {
        return new CpuKernels(true);
    }

    @ParameterizedTest(name = "adamw n={0} decay={1}")
    @CsvSource({"1,true", "37,false", "1000,true"})
    void adamw(int n, boolean decay) {
        SplittableRandom rng = new SplittableRandom(n);
        double[] p = random(rng, n, 1), g = random(rng, n, 1), m = random(rng, n, 0.1), v = random(rng, n, 0.01);
        for (int i = 0; i < n; i++) {
            v[i] = Math.abs(v[i]);
        }
        double lr = 1e-2, wd = 0.1, b1 = 0.9, b2 = 0.95, eps = 1e-8;
        int step = 3;
        double bc1 = 1 - Math.pow(b1, step), bc2 = 1 - Math.pow(b2, step);
        Tensor pt = f32(p, n), gt = f32(g, n), mt = f32(m, n), vt = f32(v, n);
        // update the middle of the block only: elements outside [1, n-1) must stay untouched
        int from = n > 2 ? 1 : 0;
        int count = n > 2 ? n - 2 : n;
        k.adamw(pt, gt, mt, vt, from, count, (float) b1, (float) b2, (float) eps, decay ? (float) (1 - lr * wd) : 1f,
                (float) (lr / bc1), (float) (1 / Math.sqrt(bc2)));
        double[] ep = p.clone(), em = m.clone(), ev = v.clone();
        for (int i = from; i < from + count; i++) { // torch.optim.AdamW, in double
            em[i] = b1 * m[i] + (1 - b1) * g[i];
            ev[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
            ep[i] = p[i] * (decay ? 1 - lr * wd : 1) - lr / bc1 * em[i] / (Math.sqrt(ev[i]) / Math.sqrt(bc2) + eps);
        }
        assertClose("adamw m", em, read(mt), 1e-7, 1e-6);
        assertClose("adamw v", ev, read(vt), 1e-9, 1e-6);
        assertClose("adamw p", ep, read(pt), 1e-6, 1e-5);
    }

    /**
     * Clipping folded into the update ({@code adamwScaled}) gives exactly the bits of {@code scale} on the
     * gradients then {@code adamw}: the same float products, the scaled gradients written back. Elements outside
     * the range stay untouched; 1003 elements leave a scalar tail after the vector loop.
     */
    @ParameterizedTest(name = "adamwScaled n={0} gradScale={1}")
    @CsvSource({"1,0.3", "1003,0.3", "1003,1", "37,0.71"})
    void adamwScaledIsScaleThenAdamw(int n, float gradScale) {
        SplittableRandom rng = new SplittableRandom(n + 5);
        double[] p = random(rng, n, 1), g = random(rng, n, 1), m = random(rng, n, 0.1), v = random(rng, n, 0.01);
        for (int i = 0; i < n; i++) {
            v[i] = Math.abs(v[i]);
        }
        int from = n > 2 ? 1 : 0;
        int count = n > 2 ? n - 2 : n;
        Tensor p1 = f32(p, n), g1 = f32(g, n), m1 = f32(m, n), v1 = f32(v, n);
        k.scale(g1.slice(from, count), gradScale);
        k.adamw(p1, g1, m1, v1, from, count, 0.9f, 0.95f, 1e-8f, 0.999f, 0.011f, 1.3f);
        Tensor p2 = f32(p, n), g2 = f32(g, n), m2 = f32(m, n), v2 = f32(v, n);
        k.adamwScaled(p2, g2, m2, v2, from, count, gradScale, 0.9f, 0.95f, 1e-8f, 0.999f, 0.011f, 1.3f);
        assertClose("params", read(p1), read(p2), 0, 0);
        assertClose("gradients, clipped in place", read(g1), read(g2), 0, 0);
        assertClose("first moment", read(m1), read(m2), 0, 0);
        assertClose("second moment", read(v1), read(v2), 0, 0);
    }

    @ParameterizedTest(name = "sumOfSquares / scale / fill n={0}")
    @CsvSource({"0", "1", "17", "100003"})
    void reductionsAndFills(int n) {
        SplittableRandom rng = new SplittableRandom(n);
        double[] x = random(rng, n, 3);
        Tensor t = f32(x, Math.max(n, 1));
        Tensor view = t.slice(0, n);
        Tensor acc = Tensor.allocateHost(org.sparkatron.tensor.DType.F64, 2);
        acc.hostBuffer().putDouble(8, 0.25);
        k.sumOfSquares(view, acc, 1);
        assertClose("sum of squares, accumulated", new double[] {Reference.dot(x, x) + 0.25},
                new double[] {acc.hostBuffer().getDouble(8)}, 1e-9, 1e-6);
        assertEquals(0.0, acc.hostBuffer().getDouble(0), "the other slot is untouched");
        k.sum(view, n, acc, 0, 0.5);
        double sum = 0;
        for (double v : x) {
            sum += v;
        }
        assertClose("sum, scaled", new double[] {0.5 * sum}, new double[] {acc.hostBuffer().getDouble(0)}, 1e-9, 1e-6);
        k.scale(view, 0.5f);
        double[] half = x.clone();
        for (int i = 0; i < n; i++) {
            half[i] *= 0.5;
        }
        assertClose("scale", half, java.util.Arrays.copyOf(read(t), n), 0, 0);
        k.fill(view, 2f);
        double[] twos = new double[n];
        java.util.Arrays.fill(twos, 2);
        assertClose("fill", twos, java.util.Arrays.copyOf(read(t), n), 0, 0);
    }

    @ParameterizedTest(name = "linear n={0} in={1} out={2}")
    @CsvSource({"1,1,1", "3,5,7", "17,33,9", "64,48,96"})
    void linear(int n, int in, int out) {
        SplittableRandom rng = new SplittableRandom(n * 31L + in);
        double[] x = random(rng, n * in, 1), w = random(rng, out * in, 1), b = random(rng, out, 1);
        double[] dout = random(rng, n * out, 1);
        Tensor y = Tensor.allocateHost(DType.F32, n, out);
        Tensor xt = f32(x, n, in), wt = f32(w, out, in), bt = f32(b, out);
        k.linearForward(y, xt, wt, bt, n, in, out);
        assertClose("linear forward", Reference.linear(x, w, b, n, in, out), read(y), 1e-5, 1e-5);

        Tensor dx = Tensor.allocateHost(DType.F32, n, in), dw = Tensor.allocateHost(DType.F32, out, in);
        Tensor db = Tensor.allocateHost(DType.F32, out);
        k.linearBackward(dx, false, dw, db, f32(dout, n, out), xt, wt, n, in, out);
        assertClose("linear dx", Reference.gradient(v -> Reference.linear(v, w, b, n, in, out), x.clone(), dout), read(dx), 1e-4, 1e-4);
        assertClose("linear dw", Reference.gradient(v -> Reference.linear(x, v, b, n, in, out), w.clone(), dout), read(dw), 1e-4, 1e-4);
        assertClose("linear db", Reference.gradient(v -> Reference.linear(x, w, v, n, in, out), b.clone(), dout), read(db), 1e-4, 1e-4);
        // gradients accumulate: a second backward doubles dw
        k.linearBackward(dx, true, dw, db, f32(dout, n, out), xt, wt, n, in, out);
        double[] twice = Reference.gradient(v -> Reference.linear(x, v, b, n, in, out), w.clone(), dout);
        for (int i = 0; i < twice.length; i++) {
            twice[i] *= 2;
        }
        assertClose("linear dw accumulated", twice, read(dw), 2e-4, 1e-4);
    }

    @ParameterizedTest(name = "layerNorm n={0} c={1}")
    @CsvSource({"1,2", "3,7", "10,64", "5,129"})
    void layerNorm(int n, int c) {
        SplittableRandom rng = new SplittableRandom(c);
        double[] x = random(rng, n * c, 2), w = random(rng, c, 1), b = random(rng, c, 1), dout = random(rng, n * c, 1);
        Tensor y = Tensor.allocateHost(DType.F32, n, c), mean = Tensor.allocateHost(DType.F32, n), rstd = Tensor.allocateHost(DType.F32, n);
        Tensor xt = f32(x, n, c), wt = f32(w, c), bt = f32(b, c);
        k.layerNormForward(y, mean, rstd, xt, wt, bt, n, c, 1e-5f);
        assertClose("layernorm forward", Reference.layerNorm(x, w, b, n, c, 1e-5), read(y), 2e-6, 2e-5);
        Tensor dx = Tensor.allocateHost(DType.F32, n, c), dw = Tensor.allocateHost(DType.F32, c), db = Tensor.allocateHost(DType.F32, c);
        k.layerNormBackward(dx, dw, db, f32(dout, n, c), xt, wt, mean, rstd, n, c);
        assertClose("layernorm dx", Reference.gradient(v -> Reference.layerNorm(v, w, b, n, c, 1e-5), x.clone(), dout), read(dx), 2e-5, 1e-4);
        assertClose("layernorm dw", Reference.gradient(v -> Reference.layerNorm(x, v, b, n, c, 1e-5), w.clone(), dout), read(dw), 2e-5, 1e-4);
        assertClose("layernorm db", Reference.gradient(v -> Reference.layerNorm(x, w, v, n, c, 1e-5), b.clone(), dout), read(db), 2e-5, 1e-4);
    }

    @ParameterizedTest(name = "rmsNorm n={0} c={1}")
    @CsvSource({"1,2", "3,7", "10,64", "5,129"})
    void rmsNorm(int n, int c) {
        SplittableRandom rng = new SplittableRandom(c + 7);
        double[] x = random(rng, n * c, 2), w = random(rng, c, 1), dout = random(rng, n * c, 1);
        Tensor y = Tensor.allocateHost(DType.F32, n, c), rstd = Tensor.allocateHost(DType.F32, n);
        Tensor xt = f32(x, n, c), wt = f32(w, c);
        k.rmsNormForward(y, rstd, xt, wt, n, c, 1e-5f);
        assertClose("rmsnorm forward", Reference.rmsNorm(x, w, n, c, 1e-5), read(y), 2e-6, 2e-5);
        Tensor dx = Tensor.allocateHost(DType.F32, n, c), dw = Tensor.allocateHost(DType.F32, c);
        k.rmsNormBackward(dx, dw, f32(dout, n, c), xt, wt, rstd, n, c);
        assertClose("rmsnorm dx", Reference.gradient(v -> Reference.rmsNorm(v, w, n, c, 1e-5), x.clone(), dout), read(dx), 2e-5, 1e-4);
        assertClose("rmsnorm dw", Reference.gradient(v -> Reference.rmsNorm(x, v, n, c, 1e-5), w.clone(), dout), read(dw), 2e-5, 1e-4);
    }

    @ParameterizedTest(name = "gelu n={0} |x|<={1}")
    @CsvSource({"1, 5", "7, 5", "1000, 5", "1000, 30"}) // 30: the backward's clamp of tanh's argument at +-40, both tails
    void gelu(int n, double scale) {
        SplittableRandom rng = new SplittableRandom(n);
        double[] x = random(rng, n, scale), dout = random(rng, n, 1);
        Tensor y = Tensor.allocateHost(DType.F32, n), xt = f32(x, n);
        k.geluForward(y, xt, n);
        assertClose("gelu forward", Reference.gelu(x), read(y), 1e-6, 1e-5);
        Tensor dx = Tensor.allocateHost(DType.F32, n);
        k.geluBackward(dx, f32(dout, n), xt, n);
        assertClose("gelu backward", Reference.gradient(Reference::gelu, x.clone(), dout), read(dx), 1e-6, 1e-5);
    }

    @ParameterizedTest(name = "swiglu n={0} f={1}")
    @CsvSource({"1,1", "3,5", "8,56"})
    void swiglu(int n, int f) {
        SplittableRandom rng = new SplittableRandom(f);
        double[] gu = random(rng, n * 2 * f, 4), dout = random(rng, n * f, 1);
        Tensor y = Tensor.allocateHost(DType.F32, n, f), gut = f32(gu, n, 2 * f);
        k.swigluForward(y, gut, n, f);
        assertClose("swiglu forward", Reference.swiglu(gu, n, f), read(y), 1e-6, 1e-5);
        Tensor dgu = Tensor.allocateHost(DType.F32, n, 2 * f);
        k.swigluBackward(dgu, f32(dout, n, f), gut, n, f);
        assertClose("swiglu backward", Reference.gradient(v -> Reference.swiglu(v, n, f), gu.clone(), dout), read(dgu), 1e-6, 1e-5);
    }

    @ParameterizedTest(name = "embedding n={0} t={1} c={2} split at {3}")
    @CsvSource({"6,3,5,0", "6,3,5,4", "16,8,32,6", "16,8,32,11"})
    void embeddingSplitOverTablesAndPositions(int n, int t, int c, int split) {
        SplittableRandom rng = new SplittableRandom(n + c + split);
        int v = 11;
        int[] tok = new int[n];
        for (int i = 0; i < n; i++) {
            tok[i] = rng.nextInt(v);
        }
        tok[n - 1] = tok[0]; // a repeated id must accumulate both gradients
        double[] wte = random(rng, v * c, 1), wpe = random(rng, t * c, 1), dout = random(rng, n * c, 1);
        Tensor tokt = i32(tok, n);
        // the table split into ids [0, split) and [split, v), as two vocab-parallel ranks hold it; split 0
        // means one table holds everything (the second, starting at 0)
        Tensor low = split == 0 ? null : f32(java.util.Arrays.copyOf(wte, split * c), split, c);
        Tensor high = f32(java.util.Arrays.copyOfRange(wte, split * c, v * c), v - split, c);
        Tensor y = Tensor.allocateHost(DType.F32, n, c);
        Tensor part = Tensor.allocateHost(DType.F32, n, c);
        k.embeddingForward(y, tokt, high, split, n, c);
        if (low != null) {
            k.embeddingForward(part, tokt, low, 0, n, c);
            k.add(y, y, part, (long) n * c); // the all-reduce across ranks
        }
        k.addPositions(y, f32(wpe, t, c), 0, n, t, c);
        assertClose("embedding + positions forward", Reference.embedding(tok, wte, wpe, n, t, c), read(y), 0, 1e-7);

        Tensor dlow = split == 0 ? null : Tensor.allocateHost(DType.F32, split, c);
        Tensor dhigh = Tensor.allocateHost(DType.F32, v - split, c);
        Tensor dwpe = Tensor.allocateHost(DType.F32, t, c);
        Tensor d = f32(dout, n, c);
        k.embeddingBackward(dhigh, d, tokt, split, n, c);
        if (dlow != null) {
            k.embeddingBackward(dlow, d, tokt, 0, n, c);
        }
        k.positionsBackward(dwpe, d, 0, n, t, c);
        double[] dwte = dlow == null ? read(dhigh) : Arrays32.concat(read(dlow), read(dhigh));
        assertClose("embedding dwte", Reference.gradient(e -> Reference.embedding(tok, e, wpe, n, t, c), wte.clone(), dout), dwte, 1e-6, 1e-5);
        assertClose("embedding dwpe", Reference.gradient(p -> Reference.embedding(tok, wte, p, n, t, c), wpe.clone(), dout), read(dwpe), 1e-6, 1e-5);
    }

    @ParameterizedTest(name = "positions for a row block starting at {0}")
    @CsvSource({"0", "5", "13"})
    void positionsOfARowBlock(int firstRow) {
        int t = 4, c = 3, rows = 6;
        double[] wpe = random(new SplittableRandom(firstRow), t * c, 1);
        Tensor x = Tensor.allocateHost(DType.F32, rows, c);
        k.addPositions(x, f32(wpe, t, c), firstRow, rows, t, c);
        double[] want = new double[rows * c];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < c; j++) {
                want[i * c + j] = wpe[((firstRow + i) % t) * c + j];
            }
        }
        assertClose("positions of rows " + firstRow + ".." + (firstRow + rows), want, read(x), 0, 0);
    }

    @ParameterizedTest(name = "rope b={0} t={1} heads={2} kv={3} hd={4}")
    @CsvSource({"1,1,1,1,2", "2,5,4,2,8", "2,7,3,1,6"})
    void rope(int b, int t, int heads, int kvHeads, int hd) {
        SplittableRandom rng = new SplittableRandom(t * 13L + hd);
        int width = (heads + 2 * kvHeads) * hd;
        double[] qkv = random(rng, b * t * width, 1);
        double theta = 10000;
        Tensor cos = Tensor.allocateHost(DType.F32, t, hd / 2), sin = Tensor.allocateHost(DType.F32, t, hd / 2);
        for (int p = 0; p < t; p++) {
            for (int j = 0; j < hd / 2; j++) {
                double ang = p * Math.pow(theta, -2.0 * j / hd);
                cos.floats().put(p * hd / 2 + j, (float) Math.cos(ang));
                sin.floats().put(p * hd / 2 + j, (float) Math.sin(ang));
            }
        }
        Tensor x = f32(qkv, b * t, width);
        k.rope(x, cos, sin, b, t, heads, kvHeads, hd, false);
        assertClose("rope forward", Reference.rope(qkv, b, t, heads, kvHeads, hd, theta), read(x), 1e-6, 1e-5);
        // RoPE is linear and orthogonal: the backward (inverse) applied to dout is the FD gradient
        double[] dout = random(rng, qkv.length, 1);
        Tensor d = f32(dout, b * t, width);
        k.rope(d, cos, sin, b, t, heads, kvHeads, hd, true);
        assertClose("rope backward", Reference.gradient(v -> Reference.rope(v, b, t, heads, kvHeads, hd, theta), qkv.clone(), dout), read(d), 1e-6, 1e-5);
    }

    @ParameterizedTest(name = "attention b={0} t={1} heads={2} kv={3} hd={4}")
    @CsvSource({"1,1,1,1,1", "2,5,2,2,4", "1,9,4,2,3", "2,16,6,3,8", "1,33,4,1,16"})
    void attention(int b, int t, int heads, int kvHeads, int hd) {
        SplittableRandom rng = new SplittableRandom(t * 7L + heads);
        int width = (heads + 2 * kvHeads) * hd;
        int c = heads * hd;
        double[] qkv = random(rng, b * t * width, 1.5), dout = random(rng, b * t * c, 1);
        Tensor out = Tensor.allocateHost(DType.F32, b * t, c), lse = Tensor.allocateHost(DType.F32, b, heads, t);
        Tensor qkvt = f32(qkv, b * t, width);
        k.attentionForward(out, lse, qkvt, b, t, heads, kvHeads, hd);
        assertClose("attention forward", Reference.attention(qkv, b, t, heads, kvHeads, hd), read(out), 2e-6, 2e-5);
        Tensor dqkv = f32(random(rng, qkv.length, 1), b * t, width); // garbage: backward must overwrite
        k.attentionBackward(dqkv, f32(dout, b * t, c), out, lse, qkvt, b, t, heads, kvHeads, hd);
        assertClose("attention backward", Reference.gradient(v -> Reference.attention(v, b, t, heads, kvHeads, hd), qkv.clone(), dout),
                read(dqkv), 2e-5, 1e-4);
    }

    /**
     * The three cross-entropy kernels, on one rank holding the whole (padded) vocabulary and on two ranks
     * splitting it (the all-reduces done by hand): losses against the reference, logits gradients against
     * finite differences, padded columns zero.
     */
    @ParameterizedTest(name = "crossEntropy rows={0} v={1} padded={2} split={3}")
    @CsvSource({"1,2,2,0", "5,7,8,0", "9,67,128,0", "5,7,8,4", "9,67,128,64", "3,67,128,96"})
    void crossEntropy(int rows, int v, int vPadded, int split) {
        SplittableRandom rng = new SplittableRandom(v + split);
        double[] z = random(rng, rows * vPadded, 6);
        int[] tg = new int[rows];
        for (int r = 0; r < rows; r++) {
            tg[r] = rng.nextInt(v);
        }
        double[] ref = Reference.crossEntropy(z, tg, rows, v, vPadded);
        float scale = 1f / rows;
        for (boolean backward : new boolean[] {false, true}) {
            int[] starts = split == 0 ? new int[] {0} : new int[] {0, split};
            Tensor[] parts = new Tensor[starts.length];
            Tensor[] maxes = new Tensor[starts.length];
            Tensor[] sums = new Tensor[starts.length];
            Tensor targets = i32(tg, rows);
            for (int p = 0; p < starts.length; p++) {
                int from = starts[p];
                int to = p + 1 < starts.length ? starts[p + 1] : vPadded;
                parts[p] = f32(columns(z, rows, vPadded, from, to), rows, to - from);
                maxes[p] = Tensor.allocateHost(DType.F32, rows);
                sums[p] = Tensor.allocateHost(DType.F32, rows, 2);
                k.crossEntropyMax(parts[p], maxes[p], rows, valid(v, from, to), to - from);
            }
            double[] globalMax = read(maxes[0]);
            for (int p = 1; p < starts.length; p++) { // all-reduce MAX
                double[] m = read(maxes[p]);
                for (int r = 0; r < rows; r++) {
                    globalMax[r] = Math.max(globalMax[r], m[r]);
                }
            }
            double[] globalSums = new double[2 * rows];
            for (int p = 0; p < starts.length; p++) {
                int from = starts[p];
                int to = p + 1 < starts.length ? starts[p + 1] : vPadded;
                maxes[p] = f32(globalMax, rows);
                k.crossEntropySums(parts[p], maxes[p], sums[p], targets, from, v, rows, valid(v, from, to), to - from, backward);
                double[] s = read(sums[p]);
                for (int i = 0; i < 2 * rows; i++) { // all-reduce SUM
                    globalSums[i] += s[i];
                }
            }
            double[] grad = new double[0];
            for (int p = 0; p < starts.length; p++) {
                int from = starts[p];
                int to = p + 1 < starts.length ? starts[p + 1] : vPadded;
                Tensor losses = Tensor.allocateHost(DType.F32, rows);
                k.crossEntropyFinish(parts[p], maxes[p], f32(globalSums, rows, 2), losses, targets, from, rows,
                        valid(v, from, to), to - from, backward, scale);
                assertClose("cross-entropy loss (rank " + p + ", backward " + backward + ")", ref, read(losses), 1e-5, 1e-5);
                grad = Arrays32.concat(grad, read(parts[p]));
            }
            if (split == 0) { // the fused call gives the three calls' bits: losses, logits (gradient), max and sums
                Tensor fz = f32(z, rows, vPadded);
                Tensor fMax = Tensor.allocateHost(DType.F32, rows);
                Tensor fSums = Tensor.allocateHost(DType.F32, rows, 2);
                Tensor fLosses = Tensor.allocateHost(DType.F32, rows);
                Tensor losses = Tensor.allocateHost(DType.F32, rows);
                k.crossEntropyFinish(f32(z, rows, vPadded), maxes[0], sums[0], losses, targets, 0, rows, v, vPadded, false, scale);
                k.crossEntropy(fz, fMax, fSums, fLosses, targets, v, rows, v, vPadded, backward, scale);
                assertClose("fused cross-entropy logits", grad, read(fz), 0, 0);
                assertClose("fused cross-entropy losses", read(losses), read(fLosses), 0, 0);
                assertClose("fused cross-entropy max", read(maxes[0]), read(fMax), 0, 0);
                assertClose("fused cross-entropy sums", read(sums[0]), read(fSums), 0, 0);
            }
            if (!backward) {
                assertClose("forward leaves the logits as they were", z, regroup(grad, rows, vPadded, starts), 0, 0);
            } else {
                double[] ones = new double[rows];
                java.util.Arrays.fill(ones, scale);
                double[] fd = Reference.gradient(x -> Reference.crossEntropy(x, tg, rows, v, vPadded), z.clone(), ones);
                assertClose("cross-entropy dlogits (padded columns zero)", fd, regroup(grad, rows, vPadded, starts), 1e-6, 1e-5);
            }
        }
        int[] bad = tg.clone();
        bad[0] = v; // a padded id is not a valid target
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> k.crossEntropySums(f32(z, rows, vPadded),
                Tensor.allocateHost(DType.F32, rows), Tensor.allocateHost(DType.F32, rows, 2), i32(bad, rows), 0, v, rows, v, vPadded, false));
        assertTrue(e.getMessage().contains("target id " + v + " at row 0"), e.getMessage());
    }

    private static int valid(int v, int from, int to) {
        return Math.max(0, Math.min(to, v) - from);
    }

    private static double[] columns(double[] z, int rows, int ld, int from, int to) {
        double[] out = new double[rows * (to - from)];
        for (int r = 0; r < rows; r++) {
            System.arraycopy(z, r * ld + from, out, r * (to - from), to - from);
        }
        return out;
    }

    /** Concatenated per-rank blocks [rows, width_p] back into [rows, ld]. */
    private static double[] regroup(double[] blocks, int rows, int ld, int[] starts) {
        double[] out = new double[rows * ld];
        int at = 0;
        for (int p = 0; p < starts.length; p++) {
            int from = starts[p];
            int to = p + 1 < starts.length ? starts[p + 1] : ld;
            for (int r = 0; r < rows; r++) {
                System.arraycopy(blocks, at + r * (to - from), out, r * ld + from, to - from);
            }
            at += rows * (to - from);
        }
        return out;
    }

    @Test
    void stridedGemmOnSubMatrices() {
        // C[2x2] block inside a 3x4 matrix from A rows with stride 5: checks leading-dimension handling
        SplittableRandom rng = new SplittableRandom(1);
        double[] a = random(rng, 3 * 5, 1), bm = random(rng, 3 * 4, 1);
        Tensor c = Tensor.allocateHost(DType.F32, 3, 4);
        Blas.sgemm(false, false, 2, 2, 3, 1f, f32(a, 3, 5), 1, 5, f32(bm, 3, 4), 1, 4, 0f, c, 5, 4);
        double[] got = read(c);
        for (int i = 0; i < 2; i++) {
            for (int j = 0; j < 2; j++) {
                double s = 0;
                for (int p = 0; p < 3; p++) {
                    s += a[1 + i * 5 + p] * bm[1 + p * 4 + j];
                }
                assertClose("C[" + i + "," + j + "]", new double[] {s}, new double[] {got[5 + i * 4 + j]}, 1e-6, 1e-6);
            }
        }
        assertClose("untouched", new double[] {0, 0, 0, 0, 0}, new double[] {got[0], got[1], got[2], got[3], got[4]}, 0, 0);
        assertThrows(IndexOutOfBoundsException.class,
                () -> Blas.sgemm(false, false, 3, 2, 3, 1f, f32(a, 3, 5), 1, 5, f32(bm, 3, 4), 1, 4, 0f, c, 5, 4));
    }

    @Test
    void addBiasAddsTheBiasToEveryRow() {
        SplittableRandom rng = new SplittableRandom(5);
        int rows = 7;
        int cols = 13;
        double[] x = random(rng, rows * cols, 1);
        double[] b = random(rng, cols, 1);
        Tensor t = f32(x, rows, cols);
        k.addBias(t, f32(b, cols), rows, cols);
        double[] want = x.clone();
        for (int i = 0; i < want.length; i++) {
            want[i] += b[i % cols];
        }
        assertClose("addBias", want, read(t), 1e-7, 1e-6); // one fp32 addition: half an ulp
    }

    /** The dropout kernel applies exactly {@link org.sparkatron.parallel.DropoutRng}'s mask and scale. */
    @Test
    void dropoutAppliesTheCounterBasedMask() {
        int rows = 9;
        int cols = 31;
        long firstRow = 123;
        float p = 0.3f;
        org.sparkatron.parallel.DropoutRng rng = new org.sparkatron.parallel.DropoutRng(p, 77);
        double[] x = random(new SplittableRandom(2), rows * cols, 1);
        Tensor t = f32(x, rows, cols);
        rng.apply(k, t, 4, 1, firstRow, rows, cols);
        double[] got = read(t);
        int dropped = 0;
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                boolean keep = rng.keep(4, 1, (firstRow + i) * cols + j);
                double want = keep ? (float) x[i * cols + j] * (1f / (1f - p)) : 0;
                assertEquals(want, got[i * cols + j], 0, "element " + i + "," + j); // the same fp32 product: exact
                dropped += keep ? 0 : 1;
            }
        }
        assertTrue(dropped > 0 && dropped < rows * cols, "some, not all, dropped: " + dropped);
    }

    /** Rounding to bf16 / fp16, into fp32 (emulated storage) and into 16-bit tensors, against HalfFloats' scalars. */
    @Test
    void roundMatchesTheScalarConversions() {
        float[] v = {0f, -0f, 1f, 1.00390625f, 1.0078125f, 3.14159265f, 65504f, 65520f, 1e-8f, -2.5e-5f, Float.NaN,
                Float.POSITIVE_INFINITY, 1.1754942e-38f, 0x1.00c0p0f};
        double[] d = new double[v.length];
        for (int i = 0; i < v.length; i++) {
            d[i] = v[i];
        }
        for (DType format : new DType[] {DType.BF16, DType.F16}) {
            Tensor src = f32(d, v.length);
            Tensor asF32 = Tensor.allocateHost(DType.F32, v.length);
            Tensor as16 = Tensor.allocateHost(format, v.length);
            k.round(asF32, src, v.length, format);
            k.round(as16, src, v.length, format);
            for (int i = 0; i < v.length; i++) {
                float want = format == DType.BF16 ? org.sparkatron.precision.HalfFloats.roundToBf16(v[i])
                        : org.sparkatron.precision.HalfFloats.roundToF16(v[i]);
                short bits = as16.hostBuffer().getShort(2 * i);
                float back = format == DType.BF16 ? org.sparkatron.precision.HalfFloats.bf16ToFloat(bits)
                        : org.sparkatron.precision.HalfFloats.f16ToFloat(bits);
                assertTrue(Float.floatToRawIntBits(want) == Float.floatToRawIntBits(asF32.floats().get(i)) || Float.isNaN(want),
                        format + " into F32, element " + i + " (" + v[i] + ")");
                assertEquals(Float.isNaN(want) ? Float.NaN : want, back, 0f, format + " into " + format + ", element " + i);
            }
            k.round(src, src, v.length, format); // in place
            assertTrue(Float.floatToRawIntBits(src.floats().get(3)) == Float.floatToRawIntBits(asF32.floats().get(3)));
        }
        assertThrows(IllegalArgumentException.class, () -> k.round(Tensor.allocateHost(DType.F32, 1),
                Tensor.allocateHost(DType.F32, 1), 1, DType.F32));
    }

    @Test
    void zeroClearsEveryByteOfAnyDtype() {
        Tensor t = i32(new int[] {1, -1, 7, 9}, 4);
        k.zero(t.slice(1, 2));
        assertEquals(1, t.ints().get(0));
        assertEquals(0, t.ints().get(1));
        assertEquals(0, t.ints().get(2));
        assertEquals(9, t.ints().get(3));
    }
}
