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
 */
public final class Blas {
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
        openblas_nolapack.blas_set_num_threads(threads);
    }

    public static int threads() {
        return openblas_nolapack.blas_get_num_threads();
    }

    /**
     * Row-major {@code C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C}, each operand an F32 tensor with
     * an element offset and a leading dimension (row stride in elements), so sub-matrices of packed
     * activations (one head of a fused QKV row, say) need no copy.
     */
    public static void sgemm(boolean transA, boolean transB, int m, int n, int k, float alpha,
                             Tensor a, long aOff, int lda, Tensor b, long bOff, int ldb,
                             float beta, Tensor c, long cOff, int ldc) {
        if (m == 0 || n == 0) {
            return;
        }
        check(a, aOff, transA ? k : m, transA ? m : k, lda, "A");
        check(b, bOff, transB ? n : k, transB ? k : n, ldb, "B");
        check(c, cOff, m, n, ldc, "C");
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
