package org.sparkatron.device.cpu;

import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.openblas.global.openblas_nolapack;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.HostStorage;
import org.sparkatron.tensor.Tensor;

/**
 * Single-precision GEMM on off-heap memory through OpenBLAS (JavaCPP presets, the {@code nolapack} build
 * only, so the process holds one copy of OpenBLAS).
 *
 * <p>Operands are passed by address: nothing is copied through the Java heap. Calls are thread-safe and
 * blocking.
 *
 * <p>Threads: OpenBLAS itself always runs single-threaded; a large GEMM is split into row (M) or column (N)
 * blocks that run as parts on {@link CpuWorkers}, the same threads the other CPU kernels use, up to the rank's
 * budget {@link #threads()} ({@link #setThreads}: process-wide, every rank of a JVM sets the same value, its
 * {@code threads_per_rank}). One pool instead of two: OpenBLAS's own workers spin for about 2^28 cycles
 * (~0.1 s) after each threaded call and took the second core from the split kernels running between GEMMs.
 * Measured on the 2-core VM, same profile command (docs/benchmarks.md): the step 1.84-1.97 s with OpenBLAS's
 * threading (with {@code OPENBLAS_THREAD_TIMEOUT=4} too), 1.56-1.58 s with this split; the attention 190 ms
 * against 90, the GEMMs 129 GFLOP/s against 141-145.
 *
 * <p>Small GEMMs (under {@link #SMALL_GEMM_FLOPS}, such as one attention head's score matrix) are not split:
 * handing them over costs more than it saves.
 *
 * <p>Determinism: a given thread count gives the same bits every time. A different count can change a large
 * GEMM's last bits: OpenBLAS's kernel rounds an element differently depending on where it falls in the block it
 * is given (checked: any M or N split point, and OpenBLAS's own threading as well, changes 3-8% of the elements
 * of the model's products by an ulp or so). So a bitwise resume needs the same {@code threads_per_rank}.
 */
public final class Blas {
    /** GEMMs below this many flops (2 m n k) are not split. */
    static final long SMALL_GEMM_FLOPS = 64L << 20;
    /**
     * A beta = 0 product with at least this many elements of C has C zeroed by memset and runs as beta = 1 (see
     * {@link #call}); smaller ones (in cache) keep OpenBLAS's own zeroing.
     */
    static final long MEMSET_C_ELEMENTS = 1L << 18;
    /** Split points fall on multiples of this many rows or columns (OpenBLAS's micro-tile edges). */
    private static final int SPLIT_ALIGN = 16;

    static {
        openblas_nolapack.blas_set_num_threads(1); // never OpenBLAS's own workers; see the class comment
    }

    // The rank's thread budget: process-wide like the OpenBLAS count it replaces, set alike by every rank.
    private static volatile int threads = Runtime.getRuntime().availableProcessors();

    private Blas() {
    }

    /** A FloatPointer aimed at a raw address, so JavaCPP passes it straight to C. */
    private static final class At extends FloatPointer {
        At(long address) {
            this.address = address;
        }
    }

    /** Sets the threads a large GEMM (and a CPU kernel, {@link CpuWorkers}) may use, for the whole process. */
    public static void setThreads(int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("BLAS thread count must be >= 1, got " + threads);
        }
        Blas.threads = threads;
    }

    /** The thread count large GEMMs use (the number of available processors until {@link #setThreads}). */
    public static int threads() {
        return threads;
    }

    /**
     * Row-major {@code C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C}, each operand an F32 tensor with
     * an element offset and a leading dimension (row stride in elements), so sub-matrices of packed
     * activations (one head of a fused QKV row, say) need no copy.
     */
    public static void sgemm(boolean transA, boolean transB, int m, int n, int k, float alpha,
                             Tensor a, long aOff, int lda, Tensor b, long bOff, int ldb,
                             float beta, Tensor c, long cOff, int ldc) {
        sgemm(threads, transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
    }

    /**
     * As the public form, on at most {@code maxThreads} threads: 1 for GEMMs issued from the parts of a kernel
     * already split over the threads ({@link CpuWorkers}); two GEMMs running side by side share the budget.
     */
    static void sgemm(int maxThreads, boolean transA, boolean transB, int m, int n, int k, float alpha,
                      Tensor a, long aOff, int lda, Tensor b, long bOff, int ldb,
                      float beta, Tensor c, long cOff, int ldc) {
        if (m == 0 || n == 0) {
            return;
        }
        check(a, aOff, transA ? k : m, transA ? m : k, lda, "A");
        check(b, bOff, transB ? n : k, transB ? k : n, ldb, "B");
        check(c, cOff, m, n, ldc, "C");
        boolean splitM = m >= n; // split the longer side: each part packs all of the other operand
        int side = splitM ? m : n;
        int parts = 2L * m * n * k < SMALL_GEMM_FLOPS ? 1 : Math.max(1, Math.min(maxThreads, side / (4 * SPLIT_ALIGN)));
        if (parts == 1) {
            call(transA, transB, m, n, k, alpha, a.address() + 4 * aOff, lda, b.address() + 4 * bOff, ldb, beta,
                    c.address() + 4 * cOff, ldc);
            return;
        }
        CpuWorkers.runPieces(parts, parts, (p, slot) -> {
            int from = splitPoint(side, parts, p);
            int to = splitPoint(side, parts, p + 1);
            if (from == to) {
                return;
            }
            if (splitM) { // rows [from, to) of C and of op(A)
                long aAt = aOff + (transA ? from : (long) from * lda);
                call(transA, transB, to - from, n, k, alpha, a.address() + 4 * aAt, lda, b.address() + 4 * bOff, ldb,
                        beta, c.address() + 4 * (cOff + (long) from * ldc), ldc);
            } else { // columns [from, to) of C and of op(B)
                long bAt = bOff + (transB ? (long) from * ldb : from);
                call(transA, transB, m, to - from, k, alpha, a.address() + 4 * aOff, lda, b.address() + 4 * bAt, ldb,
                        beta, c.address() + 4 * (cOff + from), ldc);
            }
        });
    }

    /** Start of part {@code p} of {@code parts} over {@code side} rows or columns, on a multiple of the alignment. */
    private static int splitPoint(int side, int parts, int p) {
        if (p >= parts) {
            return side;
        }
        return (int) ((long) side * p / parts) / SPLIT_ALIGN * SPLIT_ALIGN;
    }

    /**
     * One OpenBLAS call. With beta = 0, OpenBLAS zeroes C in a pass of its own (sgemm_beta, stores that first read
     * each line) and then runs the same kernel as for beta = 1 on the zeros; for a C beyond the core's L2 glibc's
     * memset (rep stosb; non-temporal stores for the largest) does that pass faster: the logits' product, 1024 x
     * 50304 on two threads, 230 ms as beta = 0 against 222 as memset and beta = 1; mid-size products 1% faster
     * (docs/benchmarks.md). The same kernel on the same zeros: the same bits, NaN or anything else in C beforehand
     * ignored (CpuWorkersTest).
     */
    private static void call(boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda,
                             long b, int ldb, float beta, long c, int ldc) {
        if (beta == 0f && (long) m * n >= MEMSET_C_ELEMENTS) {
            if (ldc == n) {
                Pointer.memset(HostStorage.at(c), 0, 4L * m * n);
            } else {
                for (int r = 0; r < m; r++) {
                    Pointer.memset(HostStorage.at(c + 4L * r * ldc), 0, 4L * n);
                }
            }
            beta = 1f;
        }
        openblas_nolapack.cblas_sgemm(openblas_nolapack.CblasRowMajor,
                transA ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                transB ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                m, n, k, alpha, new At(a), lda, new At(b), ldb, beta, new At(c), ldc);
    }

    /**
     * For benchmarks' ceilings only: square {@code C = A B} ({@code n x n}) on OpenBLAS's own worker threads
     * ({@link #threads()} of them), as a program calling OpenBLAS directly would run it; OpenBLAS is back to one
     * thread when it returns. Not for concurrent use with other GEMMs.
     */
    public static void sgemmOnOpenBlasThreads(Tensor a, Tensor b, Tensor c, int n) {
        check(a, 0, n, n, n, "A");
        check(b, 0, n, n, n, "B");
        check(c, 0, n, n, n, "C");
        openblas_nolapack.blas_set_num_threads(threads);
        try {
            call(false, false, n, n, n, 1f, a.address(), n, b.address(), n, 0f, c.address(), n);
        } finally {
            openblas_nolapack.blas_set_num_threads(1);
        }
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
