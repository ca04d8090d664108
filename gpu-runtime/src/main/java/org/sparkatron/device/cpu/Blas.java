package org.sparkatron.device.cpu;

import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.openblas.global.openblas_nolapack;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Single-precision GEMM on off-heap memory through OpenBLAS (JavaCPP presets, the {@code nolapack} build
 * only, so the process holds one copy of OpenBLAS).
 *
 * <p>Operands are passed by address: nothing is copied through the Java heap. OpenBLAS's thread count is
 * process-wide ({@link #setThreads}); with several ranks per JVM give each rank one thread. Calls are
 * thread-safe and blocking.
 *
 * <p>Small GEMMs (under {@link #SMALL_GEMM_FLOPS}, such as one attention head's score matrix) run on one
 * thread: OpenBLAS's fork/join per call costs more than it saves there, and on a busy machine its
 * spinning workers made attention 10-40x slower (measured here: 22 ms per layer on one thread against
 * 250-860 ms on two, with other processes on the cores). Thread counts never change results: OpenBLAS
 * splits M and N across threads, never the K reduction.
 */
public final class Blas {
    /** GEMMs below this many flops (2 m n k) use one thread. */
    static final long SMALL_GEMM_FLOPS = 64L << 20;

    // OpenBLAS's own state is process-wide, so these are too: the thread count asked for, and the one
    // last set. A race between ranks only costs speed (an extra set, or a call at the other count).
    private static volatile int configured = openblas_nolapack.blas_get_num_threads();
    private static volatile int current = configured;

    private Blas() {
    }

    /** A FloatPointer aimed at a raw address, so JavaCPP passes it straight to C. */
    private static final class At extends FloatPointer {
        At(long address) {
            this.address = address;
        }
    }

    /** Sets OpenBLAS's worker-thread count for the whole process. */
    public static void setThreads(int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("BLAS thread count must be >= 1, got " + threads);
        }
        configured = threads;
        current = threads;
        openblas_nolapack.blas_set_num_threads(threads);
    }

    /** The thread count large GEMMs use. */
    public static int threads() {
        return configured;
    }

    private static void useThreadsFor(long flops) {
        int want = flops < SMALL_GEMM_FLOPS ? 1 : configured;
        if (want != current) {
            current = want;
            openblas_nolapack.blas_set_num_threads(want);
        }
    }

    /**
     * Row-major {@code C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C}, each operand an F32 tensor with
     * an element offset and a leading dimension (row stride in elements), so sub-matrices of packed
     * activations (one head of a fused QKV row, say) need no copy.
     */
    public static void sgemm(boolean transA, boolean transB, int m, int n, int k, float alpha,
                             Tensor a, long aOff, int lda, Tensor b, long bOff, int ldb,
                             float beta, Tensor c, long cOff, int ldc) {
        sgemm(false, transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
    }

    /**
     * As {@link #sgemm(boolean, boolean, int, int, int, float, Tensor, long, int, Tensor, long, int, float, Tensor,
     * long, int)}, on the calling thread alone when {@code oneThread}: for GEMMs issued from several threads of
     * one kernel at once ({@link CpuWorkers}), which must not each fan out onto OpenBLAS's shared workers.
     */
    static void sgemm(boolean oneThread, boolean transA, boolean transB, int m, int n, int k, float alpha,
                      Tensor a, long aOff, int lda, Tensor b, long bOff, int ldb,
                      float beta, Tensor c, long cOff, int ldc) {
        if (m == 0 || n == 0) {
            return;
        }
        check(a, aOff, transA ? k : m, transA ? m : k, lda, "A");
        check(b, bOff, transB ? n : k, transB ? k : n, ldb, "B");
        check(c, cOff, m, n, ldc, "C");
        useThreadsFor(oneThread ? 0 : 2L * m * n * k);
        openblas_nolapack.cblas_sgemm(openblas_nolapack.CblasRowMajor,
                transA ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                transB ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                m, n, k, alpha,
                new At(a.address() + 4 * aOff), lda,
                new At(b.address() + 4 * bOff), ldb,
                beta, new At(c.address() + 4 * cOff), ldc);
    }

    /** Whole-matrix form: shapes taken from 2-D views (rows, cols) of each tensor. */
    public static void sgemm(boolean transA, boolean transB, float alpha, Tensor a, int aRows, int aCols,
                             Tensor b, int bRows, int bCols, float beta, Tensor c) {
        int m = transA ? aCols : aRows;
        int k = transA ? aRows : aCols;
        int n = transB ? bRows : bCols;
        int kb = transB ? bCols : bRows;
        if (k != kb) {
            throw new IllegalArgumentException("inner dimensions differ: " + k + " vs " + kb);
        }
        sgemm(transA, transB, m, n, k, alpha, a, 0, aCols, b, 0, bCols, beta, c, 0, n);
    }

    // A row-major matrix of `rows` rows of `cols` used elements with stride `ld` must fit in the tensor.
    private static void check(Tensor t, long off, int rows, int cols, int ld, String name) {
        if (t.dtype() != DType.F32 || !t.isHost()) {
            throw new IllegalArgumentException(name + " must be a host F32 tensor, got " + t);
        }
        if (ld < Math.max(1, cols)) {
            throw new IllegalArgumentException(name + ": leading dimension " + ld + " < columns " + cols);
        }
        long last = off + (long) (rows - 1) * ld + cols;
        if (rows > 0 && (off < 0 || last > t.numel())) {
            throw new IndexOutOfBoundsException(name + ": " + rows + "x" + cols + " (ld " + ld + ") at offset "
                    + off + " exceeds " + t.numel() + " elements");
        }
    }
}
