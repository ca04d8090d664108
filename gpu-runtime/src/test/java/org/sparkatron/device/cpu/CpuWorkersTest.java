package org.sparkatron.device.cpu;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.sparkatron.device.cpu.Arrays32.f32;
import static org.sparkatron.device.cpu.Arrays32.i32;
import static org.sparkatron.device.cpu.Arrays32.random;
import static org.sparkatron.device.cpu.Arrays32.read;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Function;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.tensor.Tensor;

/**
 * The CPU kernels that split their work over threads ({@link CpuWorkers}) give the same bits for 1, 2 and 3
 * threads (the rank's thread budget, {@link Blas#setThreads}), on shapes that do split (uneven parts, vector
 * tails in the last part): their parts never share a reduction, so comparisons are bitwise (accuracy against
 * the double-precision reference is {@link CpuKernelsTest}'s). Large GEMMs split too: checked against the
 * reference at each thread count and bitwise from call to call. And the splitting itself: every part runs, on
 * different threads, and a part's exception reaches the caller after all parts ended.
 */
class CpuWorkersTest {
    private int threadsBefore;

    @BeforeEach
    void remember() {
        threadsBefore = Blas.threads();
    }

    @AfterEach
    void restore() {
        Blas.setThreads(threadsBefore);
    }

    /** Runs {@code kernel} on fresh inputs at 1, 2 and 3 threads and checks every output's bits agree. */
    private static void sameBitsForAnyThreads(String what, Function<Integer, List<Tensor>> kernel) {
        List<double[]> single = null;
        for (int threads = 1; threads <= 3; threads++) {
            Blas.setThreads(threads);
            List<double[]> outs = new ArrayList<>();
            for (Tensor t : kernel.apply(threads)) {
                outs.add(t.dtype() == org.sparkatron.tensor.DType.F64 ? doubles(t) : read(t));
            }
            if (single == null) {
                single = outs;
                continue;
            }
            for (int i = 0; i < outs.size(); i++) {
                assertArrayEquals(single.get(i), outs.get(i), what + ": output " + i + " differs at " + threads + " threads");
            }
        }
    }

    @ParameterizedTest(name = "simd={0}")
    @ValueSource(booleans = {true, false})
    void elementwiseKernels(boolean simd) {
        CpuKernels k = new CpuKernels(simd);
        int n = 100_003; // three parts of multiples of 64 and a last one with a vector tail
        SplittableRandom rng = new SplittableRandom(1);
        double[] x = random(rng, n, 4), d = random(rng, n, 1), g = random(rng, n, 1), m = random(rng, n, 0.1);
        double[] v = random(rng, n, 0.01);
        for (int i = 0; i < n; i++) {
            v[i] = Math.abs(v[i]);
        }
        sameBitsForAnyThreads("gelu", threads -> {
            Tensor out = f32(new double[n], n), dx = f32(new double[n], n), xt = f32(x, n), dt = f32(d, n);
            k.geluForward(out, xt, n);
            k.geluBackward(dx, dt, xt, n);
            return List.of(out, dx);
        });
        sameBitsForAnyThreads("add, bias, sum of squares", threads -> {
            Tensor out = f32(new double[n], n), gt = f32(g, n);
            k.add(out, f32(x, n), f32(d, n), n);
            k.addBias(gt, f32(java.util.Arrays.copyOf(m, 1009), 1009), n / 1009, 1009);
            Tensor acc = Tensor.allocateHost(org.sparkatron.tensor.DType.F64, 2);
            k.sumOfSquares(f32(x, n), acc, 1);
            return List.of(out, gt, acc);
        });
        // the chunked sum of squares adds as SimdKernels' single loop does
        if (simd) {
            Tensor acc = Tensor.allocateHost(org.sparkatron.tensor.DType.F64, 1);
            Blas.setThreads(3);
            k.sumOfSquares(f32(x, n), acc, 0);
            assertEquals(serialSumOfSquares(f32(x, n).hostBuffer(), n), acc.hostBuffer().getDouble(0));
        }
        sameBitsForAnyThreads("adamw and scale", threads -> {
            Tensor pt = f32(x, n), gt = f32(g, n), mt = f32(m, n), vt = f32(v, n);
            k.adamw(pt, gt, mt, vt, 5, n - 9, 0.9f, 0.95f, 1e-8f, 0.999f, 1e-2f, 1.3f);
            k.scale(gt, 0.37f);
            return List.of(pt, mt, vt, gt);
        });
    }

    @ParameterizedTest(name = "simd={0}")
    @ValueSource(booleans = {true, false})
    void rowKernels(boolean simd) {
        CpuKernels k = new CpuKernels(simd);
        SplittableRandom rng = new SplittableRandom(2);
        int rows = 301, c = 384, in = 256, outF = 520; // the linear backward's two GEMMs (2 rows in outF >= 64 M) pair up
        double[] x = random(rng, rows * c, 2), w = random(rng, c, 1), b = random(rng, c, 1), dout = random(rng, rows * c, 1);
        sameBitsForAnyThreads("layer norm", threads -> {
            Tensor out = f32(new double[rows * c], rows, c), mean = f32(new double[rows], rows), rstd = f32(new double[rows], rows);
            Tensor xt = f32(x, rows, c), wt = f32(w, c);
            k.layerNormForward(out, mean, rstd, xt, wt, f32(b, c), rows, c, 1e-5f);
            Tensor dx = f32(dout, rows, c), dw = f32(b, c), db = f32(w, c); // accumulate onto non-zero gradients
            k.layerNormBackward(dx, dw, db, f32(dout, rows, c), xt, wt, mean, rstd, rows, c);
            return List.of(out, mean, rstd, dx, dw, db);
        });
        sameBitsForAnyThreads("rms norm", threads -> {
            Tensor out = f32(new double[rows * c], rows, c), rstd = f32(new double[rows], rows);
            Tensor xt = f32(x, rows, c), wt = f32(w, c);
            k.rmsNormForward(out, rstd, xt, wt, rows, c, 1e-5f);
            Tensor dx = f32(dout, rows, c), dw = f32(b, c);
            k.rmsNormBackward(dx, dw, f32(dout, rows, c), xt, wt, rstd, rows, c);
            return List.of(out, rstd, dx, dw);
        });
        double[] xin = random(rng, rows * in, 1), wl = random(rng, outF * in, 1), dy = random(rng, rows * outF, 1);
        assertTrue(2L * rows * in * outF >= Blas.SMALL_GEMM_FLOPS);
        // at 2 and 3 threads dx and dw run side by side, each whole on one thread: the bits of one thread
        sameBitsForAnyThreads("linear backward with bias", threads -> {
            Tensor dx = f32(new double[rows * in], rows, in), dw = f32(new double[outF * in], outF, in);
            Tensor dbias = f32(random(new SplittableRandom(3), outF, 1), outF);
            k.linearBackward(dx, false, dw, dbias, f32(dy, rows, outF), f32(xin, rows, in), f32(wl, outF, in), rows, in, outF);
            return List.of(dx, dw, dbias);
        });
        int ceRows = 41, vocab = 5000, ld = 5008;
        double[] logits = random(rng, ceRows * ld, 5);
        int[] targets = new int[ceRows];
        for (int r = 0; r < ceRows; r++) {
            targets[r] = rng.nextInt(vocab);
        }
        sameBitsForAnyThreads("cross-entropy", threads -> {
            Tensor z = f32(logits, ceRows, ld), max = f32(new double[ceRows], ceRows), sums = f32(new double[2 * ceRows], 2 * ceRows);
            Tensor losses = f32(new double[ceRows], ceRows), tg = i32(targets, ceRows);
            k.crossEntropyMax(z, max, ceRows, vocab, ld);
            k.crossEntropySums(z, max, sums, tg, 0, vocab, ceRows, vocab, ld, true);
            k.crossEntropyFinish(z, max, sums, losses, tg, 0, ceRows, vocab, ld, true, 0.25f);
            return List.of(z, max, sums, losses);
        });
    }

    /**
     * Large GEMMs split into row or column blocks over 1, 2 and 3 threads (each transpose, both sides, offsets and
     * strides): each against the double-precision product (fp32 over K = 320 terms of order 1: error below
     * about K * 6e-8 * sum|ab| ~ 1e-5 relative, atol 1e-4 for sums near 0), and the same bits on a second call
     * with the same thread count. Across thread counts the bits may differ: OpenBLAS's single-threaded kernel
     * rounds an element differently depending on where it falls in the block it is given (its own threading did
     * the same).
     */
    @ParameterizedTest(name = "transA={0} transB={1} m={2} n={3}")
    @org.junit.jupiter.params.provider.CsvSource({"false,false,301,517", "false,true,517,301", "true,false,301,517",
            "true,true,517,301", "false,true,1024,385"})
    void gemm(boolean transA, boolean transB, int m, int n) {
        int k = 320;
        int lda = (transA ? m : k) + 3;
        int ldb = (transB ? k : n) + 5;
        int ldc = n + 7;
        float alpha = 0.75f;
        float beta = 0.5f;
        SplittableRandom rng = new SplittableRandom(m + n);
        double[] a = random(rng, (transA ? k : m) * lda + 11, 1), b = random(rng, (transB ? n : k) * ldb + 13, 1);
        double[] c = random(rng, m * ldc + 17, 1);
        double[] expected = c.clone();
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double sum = 0;
                for (int l = 0; l < k; l++) {
                    double ail = a[11 + (transA ? l * lda + i : i * lda + l)];
                    double blj = b[13 + (transB ? j * ldb + l : l * ldb + j)];
                    sum += ail * blj;
                }
                expected[17 + i * ldc + j] = alpha * sum + beta * c[17 + i * ldc + j];
            }
        }
        assertTrue(2L * m * n * k >= Blas.SMALL_GEMM_FLOPS, "the shape must be large enough to split");
        for (int threads = 1; threads <= 3; threads++) {
            Blas.setThreads(threads);
            double[] first = null;
            for (int call = 0; call < 2; call++) {
                Tensor ct = f32(c, c.length);
                Blas.sgemm(transA, transB, m, n, k, alpha, f32(a, a.length), 11, lda, f32(b, b.length), 13, ldb, beta, ct, 17, ldc);
                double[] got = read(ct);
                if (first == null) {
                    first = got;
                    Arrays32.assertClose("sgemm at " + threads + " threads", expected, got, 1e-4, 1e-5);
                } else {
                    assertArrayEquals(first, got, "sgemm at " + threads + " threads: a second call differs");
                }
            }
        }
    }

    /**
     * A large beta = 0 product runs as memset and beta = 1 ({@link Blas#MEMSET_C_ELEMENTS}): the same bits as
     * OpenBLAS's own beta = 0 call, whatever C held before (NaN here), and the gap between rows (ldc > n) untouched.
     */
    @ParameterizedTest(name = "ldc gap {0}")
    @ValueSource(ints = {0, 7})
    void largeBetaZeroProductIsOpenBlasBits(int gap) {
        int m = 600, n = 517, k = 96, ldc = n + gap;
        assertTrue((long) m * n >= Blas.MEMSET_C_ELEMENTS, "C must be large enough for the memset path");
        SplittableRandom rng = new SplittableRandom(7);
        Tensor a = f32(random(rng, m * k, 1), m * k);
        Tensor b = f32(random(rng, k * n, 1), k * n);
        double[] init = new double[m * ldc];
        java.util.Arrays.fill(init, Double.NaN);
        for (int i = 0; i < m; i++) {
            for (int j = n; j < ldc; j++) {
                init[i * ldc + j] = 42; // the gap between rows
            }
        }
        Tensor ours = f32(init, init.length);
        Tensor theirs = f32(init, init.length);
        Blas.setThreads(1);
        Blas.sgemm(false, false, m, n, k, 0.75f, a, 0, k, b, 0, n, 0f, ours, 0, ldc);
        org.bytedeco.openblas.global.openblas_nolapack.cblas_sgemm(org.bytedeco.openblas.global.openblas_nolapack.CblasRowMajor,
                org.bytedeco.openblas.global.openblas_nolapack.CblasNoTrans, org.bytedeco.openblas.global.openblas_nolapack.CblasNoTrans,
                m, n, k, 0.75f, new org.bytedeco.javacpp.FloatPointer(a.hostBuffer().asFloatBuffer()), k,
                new org.bytedeco.javacpp.FloatPointer(b.hostBuffer().asFloatBuffer()), n, 0f,
                new org.bytedeco.javacpp.FloatPointer(theirs.hostBuffer().asFloatBuffer()), ldc);
        assertArrayEquals(read(theirs), read(ours), "memset + beta 1 against OpenBLAS's beta 0");
        if (gap > 0) {
            assertEquals(42.0, read(ours)[n], "the gap after row 0");
        }
    }

    /**
     * The column sums (LayerNorm's dw and db, RMSNorm's dw, a linear layer's bias gradient) keep one double per
     * column added over the rows in row order, vector lanes as the scalar loop: the SIMD and scalar kernels give
     * the same bits, given the same row statistics. 389 columns: whole vector blocks, a half block and a tail.
     */
    @Test
    void simdColumnSumsEqualTheScalarLoops() {
        CpuKernels simd = new CpuKernels(true);
        CpuKernels scalar = new CpuKernels(false);
        SplittableRandom rng = new SplittableRandom(6);
        int rows = 77, c = 389;
        double[] x = random(rng, rows * c, 2), w = random(rng, c, 1), dout = random(rng, rows * c, 1);
        double[] mean = random(rng, rows, 0.1), rstd = random(rng, rows, 0.5);
        for (int r = 0; r < rows; r++) {
            rstd[r] = 1 + Math.abs(rstd[r]);
        }
        for (int threads = 1; threads <= 2; threads++) {
            Blas.setThreads(threads);
            List<double[]> got = new ArrayList<>();
            for (CpuKernels k : List.of(simd, scalar)) {
                Tensor dw = f32(w, c), db = f32(w, c), rdw = f32(w, c), bias = f32(w, c);
                k.layerNormBackward(f32(new double[rows * c], rows, c), dw, db, f32(dout, rows, c), f32(x, rows, c), f32(w, c),
                        f32(mean, rows), f32(rstd, rows), rows, c);
                k.rmsNormBackward(f32(new double[rows * c], rows, c), rdw, f32(dout, rows, c), f32(x, rows, c), f32(w, c),
                        f32(rstd, rows), rows, c);
                k.biasGradient(bias, f32(dout, rows, c), rows, c);
                got.add(read(dw));
                got.add(read(db));
                got.add(read(rdw));
                got.add(read(bias));
            }
            String[] names = {"layer norm dw", "layer norm db", "rms norm dw", "bias gradient"};
            for (int i = 0; i < 4; i++) {
                assertArrayEquals(got.get(4 + i), got.get(i), names[i] + ": SIMD and scalar differ at " + threads + " threads");
            }
        }
    }

    @ParameterizedTest(name = "simd={0}")
    @ValueSource(booleans = {true, false})
    void attention(boolean simd) {
        CpuKernels k = new CpuKernels(simd);
        int b = 3, t = 70, heads = 4, kvHeads = 2, hd = 16; // 6 (sequence, kv head) units, two query heads each
        int width = (heads + 2 * kvHeads) * hd, c = heads * hd;
        SplittableRandom rng = new SplittableRandom(4);
        double[] qkv = random(rng, b * t * width, 1), dout = random(rng, b * t * c, 1);
        sameBitsForAnyThreads("attention", threads -> {
            Tensor out = f32(new double[b * t * c], b * t, c), lse = f32(new double[b * heads * t], b * heads * t);
            Tensor q = f32(qkv, b * t, width), dq = f32(new double[b * t * width], b * t, width);
            k.attentionForward(out, lse, q, b, t, heads, kvHeads, hd);
            k.attentionBackward(dq, f32(dout, b * t, c), out, lse, q, b, t, heads, kvHeads, hd);
            return List.of(out, lse, dq);
        });
    }

    @Test
    void badTargetInALaterPartReachesTheCaller() {
        Blas.setThreads(3);
        CpuKernels k = new CpuKernels(true);
        int rows = 60, vocab = 4096;
        double[] logits = random(new SplittableRandom(5), rows * vocab, 1);
        int[] targets = new int[rows];
        targets[rows - 1] = vocab + 7; // in the last part, not the caller's
        Tensor z = f32(logits, rows, vocab), max = f32(new double[rows], rows);
        k.crossEntropyMax(z, max, rows, vocab, vocab);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> k.crossEntropySums(z, max,
                f32(new double[2 * rows], 2 * rows), i32(targets, rows), 0, vocab, rows, vocab, vocab, false));
        assertTrue(e.getMessage().contains("target id " + (vocab + 7) + " at row " + (rows - 1)), e.getMessage());
    }

    @Test
    void everyPieceRunsOnceOnSeveralThreadsAndAllFinishBeforeReturn() {
        Blas.setThreads(3);
        int pieces = 40;
        java.util.concurrent.atomic.AtomicIntegerArray runs = new java.util.concurrent.atomic.AtomicIntegerArray(pieces);
        ConcurrentHashMap<Integer, String> slotThread = new ConcurrentHashMap<>();
        java.util.concurrent.atomic.AtomicBoolean slotShared = new java.util.concurrent.atomic.AtomicBoolean();
        java.util.concurrent.atomic.AtomicIntegerArray busy = new java.util.concurrent.atomic.AtomicIntegerArray(3);
        CpuWorkers.runPieces(3, pieces, (p, slot) -> {
            if (busy.incrementAndGet(slot) != 1) {
                slotShared.set(true); // two pieces at once in one slot: per-slot scratch would be overwritten
            }
            String before = slotThread.putIfAbsent(slot, Thread.currentThread().getName());
            if (before != null && !before.equals(Thread.currentThread().getName())) {
                slotShared.set(true);
            }
            sleep(p == pieces - 1 ? 60 : 2); // a slow last piece (a helper's first): runPieces must still wait for it
            runs.incrementAndGet(p);
            busy.decrementAndGet(slot);
        });
        for (int p = 0; p < pieces; p++) {
            assertEquals(1, runs.get(p), "piece " + p + " ran " + runs.get(p) + " times");
        }
        assertTrue(!slotShared.get(), "a slot was used by two threads or two pieces at once: " + slotThread);
        assertEquals(Thread.currentThread().getName(), slotThread.get(0), "slot 0 is the caller");
        assertTrue(slotThread.size() >= 2, "the pieces ran on one thread only: " + slotThread);
        // the split follows the thread budget and the work: one thread for small work, never more than the budget
        assertEquals(1, CpuWorkers.parts(1000, 1000));
        assertEquals(3, CpuWorkers.parts(1L << 30, 1000));
        assertEquals(2, CpuWorkers.parts(1L << 30, 2));
        Blas.setThreads(1);
        assertEquals(1, CpuWorkers.parts(1L << 30, 1000));
    }

    @Test
    void callersOnSeveralThreadsShareTheHelpers() throws Exception {
        // several ranks of one JVM split their kernels at the same time: every piece of every call runs exactly once
        Blas.setThreads(3);
        int callers = 4, calls = 300, pieces = 7;
        java.util.concurrent.atomic.AtomicLong wrong = new java.util.concurrent.atomic.AtomicLong();
        List<Thread> threads = new ArrayList<>();
        for (int c = 0; c < callers; c++) {
            Thread t = new Thread(() -> {
                for (int call = 0; call < calls; call++) {
                    java.util.concurrent.atomic.AtomicIntegerArray runs = new java.util.concurrent.atomic.AtomicIntegerArray(pieces);
                    CpuWorkers.runPieces(3, pieces, (p, slot) -> runs.incrementAndGet(p));
                    for (int p = 0; p < pieces; p++) {
                        if (runs.get(p) != 1) {
                            wrong.incrementAndGet();
                        }
                    }
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join(60_000);
            assertTrue(!t.isAlive(), "a caller is still waiting for its pieces");
        }
        assertEquals(0, wrong.get(), "pieces that did not run exactly once");
    }

    @Test
    void theCallerTakesOverPiecesOfAHelperThatIsLateOrSlow() {
        // one slow piece on the helper (it takes pieces from the back) while the caller runs through the rest:
        // the caller must not wait for a fixed half of the list
        Blas.setThreads(2);
        int pieces = 20;
        ConcurrentHashMap<Integer, String> ranOn = new ConcurrentHashMap<>();
        CpuWorkers.runPieces(2, pieces, (p, slot) -> {
            ranOn.put(p, Thread.currentThread().getName());
            if (slot == 1) {
                sleep(300);
            }
        });
        long onCaller = ranOn.values().stream().filter(Thread.currentThread().getName()::equals).count();
        assertEquals(pieces, ranOn.size());
        assertTrue(onCaller >= pieces - 2, "the caller ran only " + onCaller + " of " + pieces + " pieces: " + ranOn);
    }

    @Test
    void aFailingPieceStopsTheRestAndReachesTheCaller() {
        Blas.setThreads(2);
        java.util.concurrent.atomic.AtomicInteger started = new java.util.concurrent.atomic.AtomicInteger();
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> CpuWorkers.runPieces(2, 1000, (p, slot) -> {
            started.incrementAndGet();
            if (p == 0) {
                throw new IllegalStateException("piece 0 failed");
            }
            sleep(1);
        }));
        assertEquals("piece 0 failed", e.getMessage());
        assertTrue(started.get() < 100, started.get() + " pieces started after the failure");
    }

    @Test
    void interruptedCallerStillWaitsForItsPieces() throws Exception {
        Blas.setThreads(2);
        java.util.concurrent.atomic.AtomicBoolean helperStarted = new java.util.concurrent.atomic.AtomicBoolean();
        boolean[] pieceDone = new boolean[1];
        boolean[] sawInterrupt = new boolean[1];
        Thread caller = new Thread(() -> {
            Thread.currentThread().interrupt();
            CpuWorkers.runPieces(2, 2, (p, slot) -> {
                if (p == 0) { // the caller's: hold on until the helper is inside piece 1
                    long deadline = System.nanoTime() + 5_000_000_000L;
                    while (!helperStarted.get() && System.nanoTime() < deadline) {
                        Thread.onSpinWait();
                    }
                } else {
                    helperStarted.set(true);
                    long until = System.nanoTime() + 100_000_000L; // 100 ms of work the caller must wait for
                    while (System.nanoTime() < until) {
                        Thread.onSpinWait();
                    }
                    pieceDone[0] = true;
                }
            });
            sawInterrupt[0] = Thread.currentThread().isInterrupted() && pieceDone[0];
        });
        caller.start();
        caller.join(10_000);
        assertTrue(helperStarted.get(), "the helper never took piece 1");
        assertTrue(sawInterrupt[0], "runPieces() returned before the helper's piece ended, or lost the interrupt");
    }

    /** The sum of squares as one thread adds it: chunk after chunk, then the tail. */
    private static double serialSumOfSquares(java.nio.ByteBuffer b, int n) {
        double total = 0;
        int upper = SimdKernels.vectorBound(n);
        for (int i = 0; i < upper; i += SimdKernels.SQUARES_CHUNK) {
            total += SimdKernels.sumOfSquaresChunk(b, i, Math.min(upper, i + SimdKernels.SQUARES_CHUNK));
        }
        return SimdKernels.addSquares(b, upper, n, total);
    }

    private static double[] doubles(Tensor t) {
        double[] d = new double[(int) t.numel()];
        for (int i = 0; i < d.length; i++) {
            d[i] = t.hostBuffer().getDouble(8 * i);
        }
        return d;
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
