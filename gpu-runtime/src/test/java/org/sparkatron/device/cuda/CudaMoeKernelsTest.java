package org.sparkatron.device.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.device.cpu.Arrays32.f32;
import static org.sparkatron.device.cpu.Arrays32.i32;
import static org.sparkatron.device.cpu.Arrays32.random;
import static org.sparkatron.device.cpu.Arrays32.read;
import static org.sparkatron.device.cuda.CudaTests.down;
import static org.sparkatron.device.cuda.CudaTests.up;

import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MoeRouting;
import org.sparkatron.device.cpu.CpuKernels;
import org.sparkatron.device.cpu.MoeKernelsContract;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The CUDA device's mixture-of-experts kernels ({@code moe.cu}, {@code grouped_gemm.cu}): the whole
 * double-precision contract of {@link MoeKernelsContract}, and, at shapes that cross the kernels' internal
 * boundaries (more assignments than a block's 256 threads, so the block prefix sums carry across chunks; more
 * rows per expert than a 64-row GEMM tile; two column tiles; empty experts and chunks; tied weights at the
 * capacity), the CPU device's kernels on the same inputs.
 *
 * <p>Tolerances against the CPU device: routing choices, capacity drops, permutation, chunk reordering and the
 * counts and offsets must be identical (integers and copied floats); router weights, scores and the router
 * backward are double arithmetic rounded once to float, so they agree to 1e-7 absolute / 1e-6 relative (libm's
 * last-bit differences in exp); the aux and z losses are double sums in another order: 1e-12 relative; combine
 * and its backward are k-term float sums and a double dot product: 1e-6; grouped GEMMs accumulate K <= 72
 * products in fp32 in another order than OpenBLAS: 2e-5 (as CudaKernelsTest's GEMMs).
 */
@Tag("cuda")
class CudaMoeKernelsTest extends MoeKernelsContract {
    static CudaDevice dev;
    static CudaKernels k;
    final CpuKernels cpu = new CpuKernels(false);

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

    @Override
    protected Kernels kernels() {
        return k;
    }

    @Override
    protected Tensor on(Tensor host) {
        return up(dev, host);
    }

    @Override
    protected Tensor back(Tensor device) {
        return dev.toHost(device);
    }

    private static int[] ints(Tensor host) {
        int[] out = new int[(int) host.numel()];
        host.ints().get(0, out);
        return out;
    }

    private int[] downInts(Tensor d) {
        return ints(dev.toHost(d));
    }

    @ParameterizedTest(name = "n={0} e={1} k={2} sigmoid={3} norm={4}")
    @CsvSource({"300, 8, 2, false, true", "300, 8, 3, true, true", "257, 16, 4, true, false", "40, 5, 5, false, true"})
    void routingLossesAndRouterBackwardMatchTheCpuDevice(int n, int e, int kk, boolean sigmoid, boolean norm) {
        SplittableRandom rng = new SplittableRandom(n + e);
        MoeRouting r = new MoeRouting(sigmoid, norm, sigmoid ? 2.5f : 1f);
        Tensor logits = f32(random(rng, n * e, 3), n, e);
        Tensor experts = i32(new int[n * kk], n, kk);
        Tensor probs = f32(new double[n * kk], n, kk);
        Tensor scores = f32(new double[n * e], n, e);
        cpu.moe().route(logits, experts, probs, scores, n, e, kk, r);
        Tensor dLogits = up(dev, logits);
        Tensor dExperts = dev.allocate(DType.I32, n, kk);
        Tensor dProbs = dev.allocate(DType.F32, n, kk);
        Tensor dScores = dev.allocate(DType.F32, n, e);
        k.moe().route(dLogits, dExperts, dProbs, dScores, n, e, kk, r);
        assertArrayEquals(ints(experts), downInts(dExperts), "top-k choices");
        assertClose("weights", read(probs), down(dev, dProbs), 1e-7, 1e-6);
        assertClose("scores", read(scores), down(dev, dScores), 1e-7, 1e-6);

        Tensor acc = Tensor.allocateHost(DType.F64, 2);
        Tensor grad = f32(new double[e], e);
        cpu.moe().auxLoss(scores, experts, grad, acc, 0, n, e, kk, 0.25f, 3.0);
        cpu.moe().zLoss(logits, acc, 1, n, e, 0.5);
        Tensor dAcc = up(dev, Tensor.allocateHost(DType.F64, 2));
        Tensor dGrad = dev.allocate(DType.F32, e);
        k.moe().auxLoss(dScores, dExperts, dGrad, dAcc, 0, n, e, kk, 0.25f, 3.0);
        k.moe().zLoss(dLogits, dAcc, 1, n, e, 0.5);
        Tensor got = dev.toHost(dAcc);
        assertEquals(acc.hostBuffer().getDouble(0), got.hostBuffer().getDouble(0), 1e-12 * Math.abs(acc.hostBuffer().getDouble(0)), "aux");
        assertEquals(acc.hostBuffer().getDouble(8), got.hostBuffer().getDouble(8), 1e-12 * Math.abs(acc.hostBuffer().getDouble(8)), "z");
        assertClose("aux gradient", read(grad), down(dev, dGrad), 0, 0);

        Tensor dprobs = f32(random(rng, n * kk, 1), n, kk);
        Tensor dl = f32(new double[n * e], n, e);
        cpu.moe().routeBackward(dl, dprobs, logits, experts, grad, 0.05f, n, e, kk, r);
        Tensor dDl = dev.allocate(DType.F32, n, e);
        k.moe().routeBackward(dDl, up(dev, dprobs), dLogits, dExperts, dGrad, 0.05f, n, e, kk, r);
        assertClose("router backward", read(dl), down(dev, dDl), 1e-7, 1e-6);
        k.moe().routeBackward(dDl, up(dev, dprobs), dLogits, dExperts, null, 0f, n, e, kk, r);
        cpu.moe().routeBackward(dl, dprobs, logits, experts, null, 0f, n, e, kk, r);
        assertClose("router backward without aux and z", read(dl), down(dev, dDl), 1e-7, 1e-6);
    }

    /** Weights in eighths, so many assignments tie at the capacity's edge; more assignments than a block's threads. */
    @ParameterizedTest(name = "n={0} k={1} capacity={2}")
    @CsvSource({"300, 2, 40", "300, 2, 200", "150, 3, 1", "200, 2, 0"})
    void capacityAndDispatchMatchTheCpuDevice(int n, int kk, int capacity) {
        int e = 6;
        int c = 5;
        SplittableRandom rng = new SplittableRandom(n * 3 + capacity);
        int[] ex = new int[n * kk];
        double[] p = new double[n * kk];
        for (int t = 0; t < n; t++) {
            for (int j = 0; j < kk; j++) {
                ex[t * kk + j] = (t * 7 + j * 3 + (rng.nextInt(4) == 0 ? 1 : 0)) % (e - 1); // expert e-1 never chosen
                p[t * kk + j] = rng.nextInt(8) / 8.0;
            }
        }
        Tensor experts = i32(ex, n, kk);
        Tensor probs = f32(p, n, kk);
        Tensor routed = i32(ex, n, kk);
        Tensor acc = Tensor.allocateHost(DType.F64, 1);
        Tensor dExperts = up(dev, experts);
        Tensor dProbs = up(dev, probs);
        Tensor dRouted = dExperts;
        if (capacity > 0) {
            routed = i32(new int[n * kk], n, kk);
            cpu.moe().capacity(routed, probs, experts, acc, 0, n, e, kk, capacity, 0.5);
            dRouted = dev.allocate(DType.I32, n, kk);
            Tensor dAcc = up(dev, Tensor.allocateHost(DType.F64, 1));
            k.moe().capacity(dRouted, dProbs, dExperts, dAcc, 0, n, e, kk, capacity, 0.5);
            assertArrayEquals(ints(routed), downInts(dRouted), "the same assignments dropped");
            assertClose("dropped weights zeroed", read(probs), down(dev, dProbs), 0, 0);
            assertEquals(acc.hostBuffer().getDouble(0), dev.toHost(dAcc).hostBuffer().getDouble(0), "dropped count");
        }
        for (int pad : capacity > 0 ? new int[] {0, capacity} : new int[] {0}) {
            int rows = pad > 0 ? e * pad : n * kk;
            double[] x = random(rng, n * c, 1);
            Tensor out = f32(new double[rows * c], rows, c);
            Tensor map = i32(new int[n * kk], n, kk);
            Tensor counts = i32(new int[e], e);
            Tensor offsets = i32(new int[e + 1], e + 1);
            cpu.moe().permute(out, map, counts, offsets, f32(x, n, c), routed, n, c, e, kk, pad);
            Tensor dOut = up(dev, f32(random(rng, rows * c, 9), rows, c)); // garbage where no row lands is not compared
            Tensor dMap = dev.allocate(DType.I32, n, kk);
            Tensor dCounts = dev.allocate(DType.I32, e);
            Tensor dOffsets = dev.allocate(DType.I32, e + 1);
            k.moe().permute(dOut, dMap, dCounts, dOffsets, up(dev, f32(x, n, c)), dRouted, n, c, e, kk, pad);
            String what = pad > 0 ? " (padded)" : " (packed)";
            assertArrayEquals(ints(map), downInts(dMap), "row map" + what);
            assertArrayEquals(ints(counts), downInts(dCounts), "counts" + what);
            assertArrayEquals(ints(offsets), downInts(dOffsets), "offsets" + what);
            int used = ints(offsets)[e];
            double[] want = java.util.Arrays.copyOf(read(out), used * c);
            assertClose("dispatched rows" + what, want, java.util.Arrays.copyOf(down(dev, dOut), used * c), 0, 0);
            // the same call without offsets (expert parallelism's packed send buffer)
            k.moe().permute(dOut, dMap, dCounts, null, up(dev, f32(x, n, c)), dRouted, n, c, e, kk, pad);
            assertArrayEquals(ints(map), downInts(dMap), "row map without offsets" + what);

            double[] y = random(rng, rows * c, 1);
            double[] g = random(rng, n * c, 1);
            Tensor comb = f32(new double[n * c], n, c);
            cpu.moe().unpermute(comb, f32(y, rows, c), map, probs, n, c, kk);
            Tensor dComb = dev.allocate(DType.F32, n, c);
            k.moe().unpermute(dComb, up(dev, f32(y, rows, c)), dMap, dProbs, n, c, kk);
            assertClose("combine" + what, read(comb), down(dev, dComb), 1e-6, 1e-6);
            Tensor dy = f32(new double[rows * c], rows, c);
            Tensor dprobs = f32(new double[n * kk], n, kk);
            cpu.moe().unpermuteBackward(dy, dprobs, f32(g, n, c), f32(y, rows, c), map, probs, rows, n, c, kk);
            Tensor dDy = up(dev, f32(random(rng, rows * c, 9), rows, c)); // garbage: every row is overwritten
            Tensor dDprobs = dev.allocate(DType.F32, n, kk);
            k.moe().unpermuteBackward(dDy, dDprobs, up(dev, f32(g, n, c)), up(dev, f32(y, rows, c)), dMap, dProbs, rows, n, c, kk);
            assertClose("combine backward dy" + what, read(dy), down(dev, dDy), 0, 0);
            assertClose("combine backward dprobs" + what, read(dprobs), down(dev, dDprobs), 1e-6, 1e-6);
            double[] dx0 = random(rng, n * c, 1);
            Tensor dx = f32(dx0, n, c);
            cpu.moe().permuteBackward(dx, f32(y, rows, c), map, n, c, kk);
            Tensor dDx = up(dev, f32(dx0, n, c));
            k.moe().permuteBackward(dDx, up(dev, f32(y, rows, c)), dMap, n, c, kk);
            assertClose("dispatch backward (accumulated)" + what, read(dx), down(dev, dDx), 1e-6, 1e-6);
        }
    }

    @Test
    void chunkReorderingMatchesTheCpuDevice() {
        int a = 4;
        int b = 3;
        int c = 7;
        int[] counts = {5, 0, 300, 0, 0, 0, 2, 70, 1, 0, 9, 33}; // an empty source, an expert block across sources
        int rows = java.util.Arrays.stream(counts).sum();
        SplittableRandom rng = new SplittableRandom(4);
        double[] in = random(rng, rows * c, 1);
        for (boolean inverse : new boolean[] {false, true}) {
            Tensor out = f32(new double[rows * c], rows, c);
            Tensor off = i32(new int[b + 1], b + 1);
            cpu.moe().sortChunks(out, inverse ? null : off, f32(in, rows, c), i32(counts, a * b), a, b, c, inverse);
            Tensor dOut = dev.allocate(DType.F32, rows, c);
            Tensor dOff = dev.allocate(DType.I32, b + 1);
            k.moe().sortChunks(dOut, inverse ? null : dOff, up(dev, f32(in, rows, c)), up(dev, i32(counts, a * b)), a, b, c, inverse);
            assertClose("reordered rows, inverse=" + inverse, read(out), down(dev, dOut), 0, 0);
            if (!inverse) {
                assertArrayEquals(ints(off), downInts(dOff), "expert offsets");
            }
        }
    }

    /** Groups of 70, 0, 130 and 3 rows (more than one 64-row tile, an empty group), 72 outputs (two column tiles). */
    @Test
    void groupedGemmsMatchTheCpuDevice() {
        int groups = 4;
        int in = 40;
        int outF = 72;
        int[] off = {0, 70, 70, 200, 203};
        int rows = 210; // rows 203.. belong to no group: untouched
        SplittableRandom rng = new SplittableRandom(12);
        double[] x = random(rng, rows * in, 1);
        double[] w = random(rng, groups * outF * in, 0.5);
        double[] dout = random(rng, rows * outF, 1);
        double[] out0 = random(rng, rows * outF, 1);
        Tensor out = f32(out0, rows, outF);
        cpu.moe().groupedLinearForward(out, f32(x, rows, in), f32(w, groups, outF, in), i32(off, groups + 1), groups, in, outF);
        Tensor dOut = up(dev, f32(out0, rows, outF));
        Tensor dX = up(dev, f32(x, rows, in));
        Tensor dW = up(dev, f32(w, groups, outF, in));
        Tensor dOff = up(dev, i32(off, groups + 1));
        k.moe().groupedLinearForward(dOut, dX, dW, dOff, groups, in, outF);
        assertClose("grouped forward (rows outside the groups untouched)", read(out), down(dev, dOut), 2e-5, 2e-5);

        double[] dw0 = random(rng, groups * outF * in, 1);
        double[] dx0 = random(rng, rows * in, 1);
        Tensor gx = f32(dx0, rows, in);
        Tensor gw = f32(dw0, groups, outF, in);
        cpu.moe().groupedLinearBackward(gx, gw, f32(dout, rows, outF), f32(x, rows, in), f32(w, groups, outF, in), i32(off, groups + 1),
                groups, in, outF);
        Tensor dGx = up(dev, f32(dx0, rows, in));
        Tensor dGw = up(dev, f32(dw0, groups, outF, in));
        k.moe().groupedLinearBackward(dGx, dGw, up(dev, f32(dout, rows, outF)), dX, dW, dOff, groups, in, outF);
        assertClose("grouped dx", read(gx), down(dev, dGx), 2e-5, 2e-5);
        assertClose("grouped dw (accumulated; the empty group's untouched)", read(gw), down(dev, dGw), 2e-5, 2e-5);
        Tensor dGw2 = up(dev, f32(dw0, groups, outF, in));
        k.moe().groupedLinearBackward(null, dGw2, up(dev, f32(dout, rows, outF)), dX, dW, dOff, groups, in, outF);
        assertClose("grouped dw without dx", read(gw), down(dev, dGw2), 2e-5, 2e-5);
    }
}
