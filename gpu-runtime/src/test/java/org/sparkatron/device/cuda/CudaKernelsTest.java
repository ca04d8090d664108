package org.sparkatron.device.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.device.cpu.Arrays32.f32;
import static org.sparkatron.device.cpu.Arrays32.i32;
import static org.sparkatron.device.cpu.Arrays32.random;
import static org.sparkatron.device.cpu.Arrays32.read;
import static org.sparkatron.device.cuda.CudaTests.bf16;
import static org.sparkatron.device.cuda.CudaTests.down;
import static org.sparkatron.device.cuda.CudaTests.downBf16;
import static org.sparkatron.device.cuda.CudaTests.roundBf16;
import static org.sparkatron.device.cuda.CudaTests.up;

import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.sparkatron.device.cpu.CpuKernels;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Every CUDA kernel against the CPU kernels (which CpuKernelsTest checks against a double-precision
 * reference and finite differences) on the same inputs, at small shapes (the emulation runs them on the
 * CPU).
 *
 * <p>Tolerances, F32: elementwise kernels differ only by the GPU's libm (expf/tanhf within 2 ulp): atol 1e-6,
 * rtol 1e-5. Reductions of length K in fp32 in a different order than the CPU's (block trees vs sequential
 * double): about K * 6e-8 relative with K <= 200 here, so atol/rtol 2e-5; attention and cross-entropy
 * chain a few of those: 5e-5. GEMMs through cuBLASLt accumulate in fp32 in an unknown order: 2e-5 for
 * K <= 64. BF16: outputs are rounded to 8 significant bits, so one bf16 ulp (2^-8 = 3.9e-3 relative) on
 * top of the fp32 bound; inputs of the CPU reference are the same bf16 values.
 */
@Tag("cuda")
class CudaKernelsTest {
    static CudaDevice dev;
    static CudaKernels k;
    final CpuKernels cpu = new CpuKernels(false);
    final SplittableRandom rng = new SplittableRandom(7);

    @BeforeAll
    static void open() {
        dev = CudaTests.deviceOrSkip(0);
        k = dev.kernels();
    }

    @AfterAll
    static void close() {
        if (dev != null) {
            dev.close();
        }
    }

    @Test
    void linearForwardBackwardThroughCublasLt() {
        int n = 6, in = 20, out = 12;
        Tensor x = f32(random(rng, n * in, 1), n, in), w = f32(random(rng, out * in, 0.5), out, in), b = f32(random(rng, out, 1), out);
        Tensor y = Tensor.allocateHost(DType.F32, n, out);
        cpu.linearForward(y, x, w, b, n, in, out);
        Tensor dy = up(dev, y);
        Tensor dx0 = up(dev, x), dw0 = up(dev, w), db0 = up(dev, b);
        k.linearForward(dy, dx0, dw0, db0, n, in, out);
        assertClose("linear forward", read(y), down(dev, dy), 2e-5, 2e-5);

        Tensor dout = f32(random(rng, n * out, 1), n, out);
        Tensor dx = f32(random(rng, n * in, 1), n, in), gw = f32(random(rng, out * in, 1), out, in), gb = f32(random(rng, out, 1), out);
        Tensor ddx = up(dev, dx), dgw = up(dev, gw), dgb = up(dev, gb), ddout = up(dev, dout);
        cpu.linearBackward(dx, true, gw, gb, dout, x, w, n, in, out);
        k.linearBackward(ddx, true, dgw, dgb, ddout, dx0, dw0, n, in, out);
        assertClose("linear dx (accumulated)", read(dx), down(dev, ddx), 2e-5, 2e-5);
        assertClose("linear dw (accumulated)", read(gw), down(dev, dgw), 2e-5, 2e-5);
        assertClose("linear db (accumulated)", read(gb), down(dev, dgb), 2e-5, 2e-5);
        // overwrite dx, no bias
        Tensor dx2 = Tensor.allocateHost(DType.F32, n, in);
        cpu.linearBackward(dx2, false, gw, null, dout, x, w, n, in, out);
        k.linearBackward(ddx, false, dgw, null, ddout, dx0, dw0, n, in, out);
        assertClose("linear dx (overwritten)", read(dx2), down(dev, ddx), 2e-5, 2e-5);
    }

    @Test
    void linearBf16InputsAccumulateInFp32() {
        int n = 5, in = 16, out = 8;
        double[] xv = roundBf16(random(rng, n * in, 1)), wv = roundBf16(random(rng, out * in, 1));
        Tensor y = Tensor.allocateHost(DType.F32, n, out);
        cpu.linearForward(y, f32(xv, n, in), f32(wv, out, in), null, n, in, out);
        Tensor dy = dev.allocate(DType.F32, n, out);
        k.linearForward(dy, up(dev, bf16(xv, n, in)), up(dev, bf16(wv, out, in)), null, n, in, out);
        assertClose("bf16 x bf16 -> f32", read(y), down(dev, dy), 2e-5, 2e-5);
        Tensor dyb = dev.allocate(DType.BF16, n, out);
        k.linearForward(dyb, up(dev, bf16(xv, n, in)), up(dev, bf16(wv, out, in)), null, n, in, out);
        assertClose("bf16 x bf16 -> bf16", read(y), downBf16(dev, dyb), 1e-5, 4e-3);
    }

    @Test
    void embeddingsAndPositions() {
        int v = 10, n = 7, c = 9, t = 4, vocabStart = 3;
        int[] tok = {3, 5, 12, 0, 9, 5, 3};
        Tensor table = f32(random(rng, 6 * c, 1), 6, c); // ids [3, 9) held
        Tensor ids = i32(tok, n);
        Tensor out = Tensor.allocateHost(DType.F32, n, c);
        cpu.embeddingForward(out, ids, table, vocabStart, n, c);
        Tensor dout = dev.allocate(DType.F32, n, c);
        Tensor dids = up(dev, ids), dtable = up(dev, table);
        k.embeddingForward(dout, dids, dtable, vocabStart, n, c);
        assertClose("embedding forward", read(out), down(dev, dout), 0, 0);

        Tensor g = f32(random(rng, n * c, 1), n, c), dt = f32(random(rng, 6 * c, 1), 6, c);
        Tensor ddt = up(dev, dt);
        cpu.embeddingBackward(dt, g, ids, vocabStart, n, c);
        k.embeddingBackward(ddt, up(dev, g), dids, vocabStart, n, c);
        assertClose("embedding backward", read(dt), down(dev, ddt), 1e-6, 1e-6);

        Tensor wpe = f32(random(rng, t * c, 1), t, c), x = f32(random(rng, n * c, 1), n, c);
        Tensor dx = up(dev, x);
        cpu.addPositions(x, wpe, 5, n, t, c);
        k.addPositions(dx, up(dev, wpe), 5, n, t, c);
        assertClose("add positions", read(x), down(dev, dx), 0, 0);
        Tensor dwpe = f32(random(rng, t * c, 1), t, c);
        Tensor ddwpe = up(dev, dwpe);
        cpu.positionsBackward(dwpe, g, 5, n, t, c);
        k.positionsBackward(ddwpe, up(dev, g), 5, n, t, c);
        assertClose("positions backward", read(dwpe), down(dev, ddwpe), 1e-6, 1e-6);
        assertTrue(v > 0);
    }

    @Test
    void layerNormAndRmsNorm() {
        int n = 5, c = 70;
        Tensor x = f32(random(rng, n * c, 2), n, c), w = f32(random(rng, c, 1), c), b = f32(random(rng, c, 1), c);
        Tensor out = Tensor.allocateHost(DType.F32, n, c), mean = Tensor.allocateHost(DType.F32, n), rstd = Tensor.allocateHost(DType.F32, n);
        cpu.layerNormForward(out, mean, rstd, x, w, b, n, c, 1e-5f);
        Tensor dxx = up(dev, x), dw = up(dev, w), dbb = up(dev, b);
        Tensor dout = dev.allocate(DType.F32, n, c), dmean = dev.allocate(DType.F32, n), drstd = dev.allocate(DType.F32, n);
        k.layerNormForward(dout, dmean, drstd, dxx, dw, dbb, n, c, 1e-5f);
        assertClose("layernorm out", read(out), down(dev, dout), 2e-5, 2e-5);
        assertClose("layernorm mean", read(mean), down(dev, dmean), 2e-6, 2e-5);
        assertClose("layernorm rstd", read(rstd), down(dev, drstd), 2e-6, 2e-5);

        Tensor g = f32(random(rng, n * c, 1), n, c);
        Tensor gx = f32(random(rng, n * c, 1), n, c), gw = f32(random(rng, c, 1), c), gb = f32(random(rng, c, 1), c);
        Tensor dgx = up(dev, gx), dgw = up(dev, gw), dgb = up(dev, gb);
        cpu.layerNormBackward(gx, gw, gb, g, x, w, mean, rstd, n, c);
        k.layerNormBackward(dgx, dgw, dgb, up(dev, g), dxx, dw, up(dev, mean), up(dev, rstd), n, c);
        assertClose("layernorm dx", read(gx), down(dev, dgx), 2e-5, 2e-5);
        assertClose("layernorm dw", read(gw), down(dev, dgw), 2e-5, 2e-5);
        assertClose("layernorm db", read(gb), down(dev, dgb), 2e-5, 2e-5);

        Tensor rout = Tensor.allocateHost(DType.F32, n, c), rr = Tensor.allocateHost(DType.F32, n);
        cpu.rmsNormForward(rout, rr, x, w, n, c, 1e-6f);
        Tensor drout = dev.allocate(DType.F32, n, c), drr = dev.allocate(DType.F32, n);
        k.rmsNormForward(drout, drr, dxx, dw, n, c, 1e-6f);
        assertClose("rmsnorm out", read(rout), down(dev, drout), 2e-5, 2e-5);
        Tensor rgx = f32(random(rng, n * c, 1), n, c), rgw = f32(random(rng, c, 1), c);
        Tensor drgx = up(dev, rgx), drgw = up(dev, rgw);
        cpu.rmsNormBackward(rgx, rgw, g, x, w, rr, n, c);
        k.rmsNormBackward(drgx, drgw, up(dev, g), dxx, dw, up(dev, rr), n, c);
        assertClose("rmsnorm dx", read(rgx), down(dev, drgx), 2e-5, 2e-5);
        assertClose("rmsnorm dw", read(rgw), down(dev, drgw), 2e-5, 2e-5);
    }

    @Test
    void activationsAndElementwise() {
        int n = 4, f = 11, cnt = n * 2 * f;
        Tensor x = f32(random(rng, cnt, 3), cnt), g = f32(random(rng, cnt, 1), cnt);
        Tensor y = Tensor.allocateHost(DType.F32, cnt), dx = Tensor.allocateHost(DType.F32, cnt);
        cpu.geluForward(y, x, cnt);
        cpu.geluBackward(dx, g, x, cnt);
        Tensor dxx = up(dev, x), dy = dev.allocate(DType.F32, cnt), ddx = dev.allocate(DType.F32, cnt);
        k.geluForward(dy, dxx, cnt);
        k.geluBackward(ddx, up(dev, g), dxx, cnt);
        assertClose("gelu", read(y), down(dev, dy), 1e-6, 1e-5);
        assertClose("gelu backward", read(dx), down(dev, ddx), 1e-6, 1e-5);

        Tensor sw = Tensor.allocateHost(DType.F32, n, f), dgu = Tensor.allocateHost(DType.F32, n, 2 * f);
        Tensor gs = f32(random(rng, n * f, 1), n, f);
        cpu.swigluForward(sw, x, n, f);
        cpu.swigluBackward(dgu, gs, x, n, f);
        Tensor dsw = dev.allocate(DType.F32, n, f), ddgu = dev.allocate(DType.F32, n, 2 * f);
        k.swigluForward(dsw, dxx, n, f);
        k.swigluBackward(ddgu, up(dev, gs), dxx, n, f);
        assertClose("swiglu", read(sw), down(dev, dsw), 1e-6, 1e-5);
        assertClose("swiglu backward", read(dgu), down(dev, ddgu), 1e-6, 1e-5);

        Tensor sum = Tensor.allocateHost(DType.F32, cnt);
        cpu.add(sum, x, g, cnt);
        Tensor dsum = dev.allocate(DType.F32, cnt);
        k.add(dsum, dxx, up(dev, g), cnt);
        assertClose("add", read(sum), down(dev, dsum), 0, 0);

        // bf16 storage: the same math on bf16 inputs, output rounded once
        double[] xb = roundBf16(random(rng, cnt, 3));
        Tensor yb = Tensor.allocateHost(DType.F32, cnt);
        cpu.geluForward(yb, f32(xb, cnt), cnt);
        Tensor dyb = dev.allocate(DType.BF16, cnt);
        k.geluForward(dyb, up(dev, bf16(xb, cnt)), cnt);
        assertClose("gelu bf16", roundBf16(read(yb)), downBf16(dev, dyb), 1e-6, 4e-3);

        Tensor ob = f32(random(rng, n * f, 1), n, f), bias = f32(random(rng, f, 1), f);
        Tensor dob = up(dev, ob);
        k.addBias(dob, up(dev, bias), n, f);
        double[] expect = read(ob);
        for (int i = 0; i < expect.length; i++) {
            expect[i] = (float) (expect[i] + (float) read(bias)[i % f]);
        }
        assertClose("add bias", expect, down(dev, dob), 0, 0);
    }

    @Test
    void roundToSixteenBitsIsExact() {
        int cnt = 1000;
        double[] v = random(rng, cnt, 100);
        v[0] = 65504;
        v[1] = 65520; // rounds to infinity in f16
        v[2] = 1e-7;  // f16 subnormal
        v[3] = Float.MIN_VALUE;
        Tensor src = up(dev, f32(v, cnt));
        Tensor asBf16 = dev.allocate(DType.F32, cnt), asF16 = dev.allocate(DType.F32, cnt), toBf16 = dev.allocate(DType.BF16, cnt);
        k.round(asBf16, src, cnt, DType.BF16);
        k.round(asF16, src, cnt, DType.F16);
        k.round(toBf16, src, cnt, DType.BF16);
        double[] eb = new double[cnt], ef = new double[cnt];
        for (int i = 0; i < cnt; i++) {
            eb[i] = org.sparkatron.precision.HalfFloats.roundToBf16((float) v[i]);
            ef[i] = org.sparkatron.precision.HalfFloats.roundToF16((float) v[i]);
        }
        assertClose("round as bf16", eb, down(dev, asBf16), 0, 0);
        double[] f16 = down(dev, asF16);
        assertEquals(Double.POSITIVE_INFINITY, f16[1], "65520 rounds to infinity in f16");
        f16[1] = ef[1] = 0;
        assertClose("round as f16", ef, f16, 0, 0);
        assertClose("round to bf16", eb, downBf16(dev, toBf16), 0, 0);
    }

    @Test
    void dropoutMaskIsBitIdenticalToDropoutRng() {
        int rows = 9, cols = 13;
        long seed = 42, step = 3;
        int site = 2;
        float p = 0.3f;
        DropoutRng rng2 = new DropoutRng(p, seed);
        long base = rng2.base(step, site);
        double[] ones = new double[rows * cols];
        java.util.Arrays.fill(ones, 1.0);
        Tensor x = up(dev, f32(ones, rows, cols));
        k.dropout(x, p, base, 100, rows, cols);
        double[] got = down(dev, x);
        float scale = 1f / (1f - p);
        int dropped = 0;
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                boolean keep = rng2.keep(step, site, (100L + i) * cols + j);
                assertEquals(keep ? scale : 0f, (float) got[i * cols + j], "element (" + i + ", " + j + ")");
                dropped += keep ? 0 : 1;
            }
        }
        assertTrue(dropped > 10 && dropped < 60, "about 30% dropped, got " + dropped);
    }

    @Test
    void ropeForwardAndInverse() {
        int b = 2, t = 3, heads = 4, kvHeads = 2, hd = 6, width = (heads + 2 * kvHeads) * hd;
        Tensor qkv = f32(random(rng, b * t * width, 1), b * t, width);
        Tensor cos = f32(random(rng, t * hd / 2, 1), t, hd / 2), sin = f32(random(rng, t * hd / 2, 1), t, hd / 2);
        Tensor d = up(dev, qkv), dc = up(dev, cos), ds = up(dev, sin);
        cpu.rope(qkv, cos, sin, b, t, heads, kvHeads, hd, false);
        k.rope(d, dc, ds, b, t, heads, kvHeads, hd, false);
        assertClose("rope", read(qkv), down(dev, d), 1e-6, 1e-6);
        cpu.rope(qkv, cos, sin, b, t, heads, kvHeads, hd, true);
        k.rope(d, dc, ds, b, t, heads, kvHeads, hd, true);
        assertClose("rope inverse", read(qkv), down(dev, d), 1e-6, 1e-6);
    }

    @Test
    void attentionForwardBackwardGroupedQuery() {
        int b = 2, t = 7, heads = 4, kvHeads = 2, hd = 40, width = (heads + 2 * kvHeads) * hd, c = heads * hd;
        Tensor qkv = f32(random(rng, b * t * width, 1), b * t, width);
        Tensor out = Tensor.allocateHost(DType.F32, b * t, c), lse = Tensor.allocateHost(DType.F32, b * heads * t);
        cpu.attentionForward(out, lse, qkv, b, t, heads, kvHeads, hd);
        Tensor dqkv0 = up(dev, qkv), dout = dev.allocate(DType.F32, b * t, c), dlse = dev.allocate(DType.F32, b * heads * t);
        k.attentionForward(dout, dlse, dqkv0, b, t, heads, kvHeads, hd);
        assertClose("attention out", read(out), down(dev, dout), 5e-5, 5e-5);
        assertClose("attention lse", read(lse), down(dev, dlse), 5e-5, 5e-5);

        Tensor g = f32(random(rng, b * t * c, 1), b * t, c);
        Tensor grad = Tensor.allocateHost(DType.F32, b * t, width);
        cpu.attentionBackward(grad, g, out, lse, qkv, b, t, heads, kvHeads, hd);
        Tensor dgrad = dev.allocate(DType.F32, b * t, width);
        k.attentionBackward(dgrad, up(dev, g), dout, dlse, dqkv0, b, t, heads, kvHeads, hd);
        assertClose("attention dqkv", read(grad), down(dev, dgrad), 5e-5, 5e-5);
    }

    @Test
    void splitCrossEntropyForwardAndBackward() {
        int rows = 5, valid = 9, ld = 12, vocabStart = 4, vocab = 20;
        int[] targets = {4, 0, 12, 19, 7};
        double[] z = random(rng, rows * ld, 4);
        Tensor logits = f32(z, rows, ld), tg = i32(targets, rows);
        Tensor max = Tensor.allocateHost(DType.F32, rows), sums = Tensor.allocateHost(DType.F32, 2 * rows), losses = Tensor.allocateHost(DType.F32, rows);
        cpu.crossEntropyMax(logits, max, rows, valid, ld);
        cpu.crossEntropySums(logits, max, sums, tg, vocabStart, vocab, rows, valid, ld, true);
        cpu.crossEntropyFinish(logits, max, sums, losses, tg, vocabStart, rows, valid, ld, true, 0.5f);
        Tensor dl = up(dev, f32(z, rows, ld)), dtg = up(dev, tg);
        Tensor dmax = dev.allocate(DType.F32, rows), dsums = dev.allocate(DType.F32, 2 * rows), dlosses = dev.allocate(DType.F32, rows);
        k.crossEntropyMax(dl, dmax, rows, valid, ld);
        k.crossEntropySums(dl, dmax, dsums, dtg, vocabStart, vocab, rows, valid, ld, true);
        k.crossEntropyFinish(dl, dmax, dsums, dlosses, dtg, vocabStart, rows, valid, ld, true, 0.5f);
        assertClose("ce max", read(max), down(dev, dmax), 0, 0);
        assertClose("ce sums", read(sums), down(dev, dsums), 2e-6, 2e-5);
        assertClose("ce losses", read(losses), down(dev, dlosses), 5e-5, 5e-5);
        assertClose("ce dlogits", read(logits), down(dev, dl), 1e-6, 5e-5);
    }

    @Test
    void targetOutsideTheVocabularyIsReportedAtTheNextSynchronisation() {
        int rows = 3, v = 8;
        Tensor dl = up(dev, f32(random(rng, rows * v, 1), rows, v));
        Tensor dmax = dev.allocate(DType.F32, rows), dsums = dev.allocate(DType.F32, 2 * rows);
        Tensor dtg = up(dev, i32(new int[] {1, 8, 2}, rows));
        k.crossEntropyMax(dl, dmax, rows, v, v);
        k.crossEntropySums(dl, dmax, dsums, dtg, 0, v, rows, v, v, false);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, dev::synchronize);
        assertEquals("target id 8 at row 1 is outside the vocabulary of 8", e.getMessage());
        dev.synchronize(); // reported once, then cleared
    }

    @Test
    void adamwAndReductions() {
        int n = 1000;
        double[] p = random(rng, n, 1), g = random(rng, n, 1), m = random(rng, n, 0.1), v = random(rng, n, 0.01);
        for (int i = 0; i < n; i++) {
            v[i] = Math.abs(v[i]);
        }
        Tensor pt = f32(p, n), gt = f32(g, n), mt = f32(m, n), vt = f32(v, n);
        Tensor dp = up(dev, pt), dg = up(dev, gt), dm = up(dev, mt), dv = up(dev, vt);
        cpu.adamw(pt, gt, mt, vt, 3, 990, 0.9f, 0.95f, 1e-8f, 0.999f, 0.01f, 1.2f);
        k.adamw(dp, dg, dm, dv, 3, 990, 0.9f, 0.95f, 1e-8f, 0.999f, 0.01f, 1.2f);
        assertClose("adamw p", read(pt), down(dev, dp), 1e-7, 1e-6);
        assertClose("adamw m", read(mt), down(dev, dm), 1e-8, 1e-6);
        assertClose("adamw v", read(vt), down(dev, dv), 1e-10, 1e-6);
        // clipping folded into the update: the device's default (scale, then adamw) against the CPU's fused loop
        Tensor sp = f32(p, n), sg = f32(g, n), sm = f32(m, n), sv = f32(v, n);
        Tensor dsp = up(dev, sp), dsg = up(dev, sg), dsm = up(dev, sm), dsv = up(dev, sv);
        cpu.adamwScaled(sp, sg, sm, sv, 3, 990, 0.4f, 0.9f, 0.95f, 1e-8f, 0.999f, 0.01f, 1.2f);
        k.adamwScaled(dsp, dsg, dsm, dsv, 3, 990, 0.4f, 0.9f, 0.95f, 1e-8f, 0.999f, 0.01f, 1.2f);
        assertClose("adamwScaled g", read(sg), down(dev, dsg), 0, 0); // one float product each
        assertClose("adamwScaled p", read(sp), down(dev, dsp), 1e-7, 1e-6);
        assertClose("adamwScaled m", read(sm), down(dev, dsm), 1e-8, 1e-6);
        assertClose("adamwScaled v", read(sv), down(dev, dsv), 1e-10, 1e-6);

        double ss = 0, s = 0;
        for (double e : g) {
            ss += (double) (float) e * (float) e;
            s += (float) e;
        }
        Tensor acc = dev.allocate(DType.F64, 2);
        dev.zero(acc);
        k.sumOfSquares(dg, acc, 1);
        k.sum(dg, n, acc, 0, 0.5);
        k.sum(dg, n, acc, 0, 0.5);
        java.nio.ByteBuffer h = java.nio.ByteBuffer.allocateDirect(16).order(java.nio.ByteOrder.nativeOrder());
        dev.download(h, acc);
        assertEquals(s, h.getDouble(0), 1e-9 * Math.abs(s) + 1e-12);
        assertEquals(ss, h.getDouble(8), 1e-9 * ss);

        k.scale(dg, 0.5f);
        k.fill(dm, 2f);
        double[] half = read(gt);
        for (int i = 0; i < n; i++) {
            half[i] = (float) (half[i] * 0.5f);
        }
        assertClose("scale", half, down(dev, dg), 0, 0);
        double[] twos = new double[n];
        java.util.Arrays.fill(twos, 2);
        assertClose("fill", twos, down(dev, dm), 0, 0);
    }
}
