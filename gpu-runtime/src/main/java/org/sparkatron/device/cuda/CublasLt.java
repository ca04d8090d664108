package org.sparkatron.device.cuda;

import static org.bytedeco.cuda.global.cublas.CUBLASLT_EPILOGUE_BIAS;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_DESC_A_SCALE_POINTER;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_DESC_B_SCALE_POINTER;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_EPILOGUE_DEFAULT;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_DESC_BIAS_POINTER;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_DESC_EPILOGUE;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_DESC_TRANSA;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_DESC_TRANSB;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES;
import static org.bytedeco.cuda.global.cublas.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES;
import static org.bytedeco.cuda.global.cublas.CUBLAS_COMPUTE_32F;
import static org.bytedeco.cuda.global.cublas.CUBLAS_COMPUTE_32F_FAST_TF32;
import static org.bytedeco.cuda.global.cublas.CUBLAS_OP_N;
import static org.bytedeco.cuda.global.cublas.CUBLAS_OP_T;
import static org.bytedeco.cuda.global.cudart.CUDA_R_16BF;
import static org.bytedeco.cuda.global.cudart.CUDA_R_16F;
import static org.bytedeco.cuda.global.cudart.CUDA_R_32F;
import static org.bytedeco.cuda.global.cudart.CUDA_R_8F_E4M3;
import static org.bytedeco.cuda.global.cudart.CUDA_R_8F_E5M2;

import java.util.HashMap;
import java.util.Map;
import org.bytedeco.cuda.cublas.cublasLtContext;
import org.bytedeco.cuda.cublas.cublasLtMatmulDescOpaque_t;
import org.bytedeco.cuda.cublas.cublasLtMatmulHeuristicResult_t;
import org.bytedeco.cuda.cublas.cublasLtMatmulPreferenceOpaque_t;
import org.bytedeco.cuda.cublas.cublasLtMatrixLayoutOpaque_t;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.global.cublas;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.javacpp.IntPointer;
import org.bytedeco.javacpp.LongPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerPointer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * GEMMs through cuBLASLt (JavaCPP's presets) on one {@link CudaDevice}'s compute stream, in cuBLAS's
 * column-major terms: {@code D[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta D}, optionally {@code + bias[row]}
 * fused as the epilogue. Inputs F32, BF16 or F16 (A and B of one type), D F32 or the input type, fp32
 * accumulation; F32 inputs compute in full fp32 by default (TF32 with the system property
 * {@code sparkatron.cuda.tf32=true}). FP8 GEMMs ({@link #matmulFp8}) take E4M3/E5M2 codes with per-tensor
 * scale pointers, "TN" only (Hopper's FP8 kernels need A transposed and B not), fp32 accumulation with
 * cuBLASLt's split (precise) accumulator, F32 output. The descriptors and the algorithm cuBLASLt's heuristic picks are
 * cached per shape and operand alignment, so a training step after the first only calls {@code cublasLtMatmul}.
 * The heuristic is told the operands' real alignment (its default assumes 256 bytes, and an algorithm picked
 * on that assumption refuses a less aligned view at run time) and, for FP8, sees the scale pointers set (an
 * algorithm picked without them refuses them). The workspace comes from the device's allocator.
 *
 * <p>Owned by one device (one rank's thread); not thread-safe.
 */
final class CublasLt implements AutoCloseable {
    private static final long WORKSPACE_BYTES = 32L << 20;

    /** {@code align}: the smallest alignment in bytes (at most 256) of the A, B and D addresses. */
    private record Key(boolean transA, boolean transB, long m, long n, long k, long lda, long ldb, long ldd, DType a, DType b,
                       DType d, DType bias, int align) {
    }

    /** The largest power of two up to 256 that divides every address: what the heuristic may assume. */
    private static int alignment(long... addresses) {
        int align = 256;
        for (long address : addresses) {
            while (address % align != 0) {
                align /= 2;
            }
        }
        return align;
    }

    private static final class Plan {
        cublasLtMatmulDescOpaque_t desc;
        cublasLtMatrixLayoutOpaque_t a;
        cublasLtMatrixLayoutOpaque_t b;
        cublasLtMatrixLayoutOpaque_t d;
        cublasLtMatmulHeuristicResult_t algo;
    }

    private final CudaDevice device;
    private final cublasLtContext handle = new cublasLtContext();
    private final Map<Key, Plan> plans = new HashMap<>();
    private final FloatPointer alpha = new FloatPointer(1);
    private final FloatPointer beta = new FloatPointer(1);
    private final LongPointer biasAddress = new LongPointer(1);
    private final LongPointer scaleAddress = new LongPointer(1);
    private final Tensor workspace;
    /** The two scales of the FP8 GEMM being queued, at 256-byte aligned places (slots 0 and 64): see matmulFp8. */
    private final Tensor fp8Scales;
    private final CUstream_st stream;
    private final boolean tf32 = Boolean.getBoolean("sparkatron.cuda.tf32");

    CublasLt(CudaDevice device) {
        this.device = device;
        try {
            check(cublas.cublasLtCreate(handle), "cublasLtCreate");
        } catch (LinkageError e) {
            throw new CudaException("cuBLASLt (libcublasLt.so.13 through JavaCPP) did not load: " + e, e);
        }
        this.workspace = device.allocate(DType.I32, WORKSPACE_BYTES / 4);
        this.fp8Scales = device.allocate(DType.F32, 128);
        this.stream = new CUstream_st(at(device.computeStreamAddress()));
    }

    /**
     * A JavaCPP pointer at a raw address (owning nothing). The parameter must not be called {@code address}:
     * inside the anonymous subclass that name is Pointer's own field, which would be assigned to itself.
     */
    static Pointer at(long raw) {
        return new Pointer() {
            {
                this.address = raw;
            }
        };
    }

    private static void check(int status, String call) {
        if (status != 0) {
            throw new CudaException(call + ": cuBLAS status " + status + statusName(status));
        }
    }

    private static String statusName(int s) {
        return switch (s) {
            case 1 -> " (CUBLAS_STATUS_NOT_INITIALIZED)";
            case 7 -> " (CUBLAS_STATUS_INVALID_VALUE)";
            case 13 -> " (CUBLAS_STATUS_EXECUTION_FAILED)";
            case 15 -> " (CUBLAS_STATUS_NOT_SUPPORTED)";
            default -> "";
        };
    }

    private static int cudaType(DType t) {
        return switch (t) {
            case F32 -> CUDA_R_32F;
            case BF16 -> CUDA_R_16BF;
            case F16 -> CUDA_R_16F;
            case FP8_E4M3 -> CUDA_R_8F_E4M3;
            case FP8_E5M2 -> CUDA_R_8F_E5M2;
            default -> throw new IllegalArgumentException("cuBLASLt GEMM of " + t + " tensors is not supported");
        };
    }

    /**
     * {@code D = alpha op(A) op(B) + beta D (+ bias[row])}, column-major with leading dimensions in elements;
     * A and B are element offsets {@code aOff}, {@code bOff} into their tensors.
     */
    void matmul(boolean transA, boolean transB, long m, long n, long k, float alphaValue, Tensor a, long aOff, long lda, Tensor b,
                long bOff, long ldb, float betaValue, Tensor d, long dOff, long ldd, Tensor bias) {
        if (m == 0 || n == 0) {
            return;
        }
        if (a.dtype() != b.dtype()) {
            throw new IllegalArgumentException("GEMM of " + a.dtype() + " by " + b.dtype());
        }
        if (k == 0) {
            throw new IllegalArgumentException("GEMM with an empty inner dimension");
        }
        if (a.dtype().bytes() == 1) {
            throw new IllegalArgumentException("FP8 GEMMs go through matmulFp8");
        }
        Key key = new Key(transA, transB, m, n, k, lda, ldb, ldd, a.dtype(), b.dtype(), d.dtype(), bias == null ? null : bias.dtype(),
                alignment(a.address() + aOff * a.dtype().bytes(), b.address() + bOff * b.dtype().bytes(), d.address() + dOff * d.dtype().bytes()));
        Plan p = planFor(key, 0, 0);
        if (bias != null) {
            biasAddress.put(0, bias.address());
            check(cublas.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, biasAddress, 8),
                    "cublasLtMatmulDescSetAttribute(bias pointer)");
        }
        run(p, key, alphaValue, a, aOff, b, bOff, betaValue, d, dOff);
    }

    /** The cached plan for {@code key}; FP8 keys pass their scale addresses (0 otherwise), set before the heuristic. */
    private Plan planFor(Key key, long aScale, long bScale) {
        Plan p = plans.get(key);
        if (p == null) {
            p = plan(key, aScale, bScale);
            plans.put(key, p);
        }
        device.makeCurrent();
        return p;
    }

    /**
     * The FP8 GEMM {@code D[m, n] = scaleA * scaleB * (A^T B) + beta D}, column-major: A is {@code [k, m]}
     * (leading dimension lda) and used transposed, B is {@code [k, n]} (ldb), both E4M3 or E5M2 codes (not both
     * E5M2); the scales are read on the device from {@code scales[aSlot]} and {@code scales[bSlot]} (F32) when
     * the GEMM runs, so they may be computed by kernels queued before. D is F32 (overwritten, or accumulated
     * with beta 1). cuBLASLt wants 16-byte aligned operands and leading dimensions that are multiples of 16;
     * callers ensure both (Fp8Linear refuses other sizes).
     */
    void matmulFp8(long m, long n, long k, Tensor a, long lda, Tensor b, long ldb, Tensor scales, int aSlot, int bSlot,
                   float betaValue, Tensor d, long ldd) {
        if (a.dtype().bytes() != 1 || b.dtype().bytes() != 1 || (a.dtype() == DType.FP8_E5M2 && b.dtype() == DType.FP8_E5M2)) {
            throw new IllegalArgumentException("FP8 GEMM of " + a.dtype() + " by " + b.dtype() + " (E4M3 x E4M3 or E4M3 x E5M2)");
        }
        if (d.dtype() != DType.F32 || scales.dtype() != DType.F32) {
            throw new IllegalArgumentException("FP8 GEMM into " + d.dtype() + " with " + scales.dtype() + " scales (F32 expected)");
        }
        if (m == 0 || n == 0) {
            return;
        }
        if (k == 0) {
            throw new IllegalArgumentException("GEMM with an empty inner dimension");
        }
        Key key = new Key(true, false, m, n, k, lda, ldb, ldd, a.dtype(), b.dtype(), d.dtype(), null,
                alignment(a.address(), b.address(), d.address()));
        // cuBLASLt refused (NOT_SUPPORTED, on the H200 with cuBLAS 13) FP8 GEMMs whose scale pointers sat at 4-byte
        // offsets into the recipe's scale table: each scale is copied, stream-ordered, to its own aligned place
        device.copy2d(fp8Scales, 0, 1, scales, aSlot, 1, 1, 1);
        device.copy2d(fp8Scales, 64, 1, scales, bSlot, 1, 1, 1);
        long aScale = fp8Scales.address();
        long bScale = fp8Scales.address() + 4L * 64;
        Plan p = planFor(key, aScale, bScale);
        setScales(p, aScale, bScale);
        run(p, key, 1f, a, 0, b, 0, betaValue, d, 0);
    }

    private void setScales(Plan p, long aScale, long bScale) {
        scaleAddress.put(0, aScale);
        check(cublas.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, scaleAddress, 8),
                "cublasLtMatmulDescSetAttribute(A scale pointer)");
        scaleAddress.put(0, bScale);
        check(cublas.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, scaleAddress, 8),
                "cublasLtMatmulDescSetAttribute(B scale pointer)");
    }

    private void run(Plan p, Key key, float alphaValue, Tensor a, long aOff, Tensor b, long bOff, float betaValue, Tensor d, long dOff) {
        boolean transA = key.transA();
        boolean transB = key.transB();
        long m = key.m();
        long n = key.n();
        long k = key.k();
        alpha.put(0, alphaValue);
        beta.put(0, betaValue);
        Pointer pa = at(a.address() + aOff * a.dtype().bytes());
        Pointer pb = at(b.address() + bOff * b.dtype().bytes());
        Pointer pd = at(d.address() + dOff * d.dtype().bytes());
        check(cublas.cublasLtMatmul(handle, p.desc, alpha, pa, p.a, pb, p.b, beta, pd, p.d, pd, p.d, p.algo.algo(),
                at(workspace.address()), WORKSPACE_BYTES, stream),
                "cublasLtMatmul(" + (transA ? "T" : "N") + (transB ? "T" : "N") + " m=" + m + " n=" + n + " k=" + k + " "
                        + a.dtype() + "->" + d.dtype() + ")");
    }

    private Plan plan(Key key, long aScale, long bScale) {
        Plan p = new Plan();
        int compute = key.a() == DType.F32 && tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        PointerPointer<Pointer> out = new PointerPointer<>(1);
        check(cublas.cublasLtMatmulDescCreate(out, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
        p.desc = new cublasLtMatmulDescOpaque_t(out.get(0));
        IntPointer v = new IntPointer(1);
        v.put(0, key.transA() ? CUBLAS_OP_T : CUBLAS_OP_N);
        check(cublas.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, v, 4), "cublasLtMatmulDescSetAttribute(transa)");
        v.put(0, key.transB() ? CUBLAS_OP_T : CUBLAS_OP_N);
        check(cublas.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, v, 4), "cublasLtMatmulDescSetAttribute(transb)");
        v.put(0, key.bias() != null ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
        check(cublas.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, v, 4), "cublasLtMatmulDescSetAttribute(epilogue)");
        if (key.bias() != null) {
            v.put(0, cudaType(key.bias()));
            check(cublas.cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, v, 4),
                    "cublasLtMatmulDescSetAttribute(bias type)");
        }
        if (key.a().bytes() == 1) {
            setScales(p, aScale, bScale);
        }
        p.a = layout(key.a(), key.transA() ? key.k() : key.m(), key.transA() ? key.m() : key.k(), key.lda());
        p.b = layout(key.b(), key.transB() ? key.n() : key.k(), key.transB() ? key.k() : key.n(), key.ldb());
        p.d = layout(key.d(), key.m(), key.n(), key.ldd());
        PointerPointer<Pointer> prefOut = new PointerPointer<>(1);
        check(cublas.cublasLtMatmulPreferenceCreate(prefOut), "cublasLtMatmulPreferenceCreate");
        cublasLtMatmulPreferenceOpaque_t pref = new cublasLtMatmulPreferenceOpaque_t(prefOut.get(0));
        LongPointer ws = new LongPointer(1);
        ws.put(0, WORKSPACE_BYTES);
        check(cublas.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ws, 8),
                "cublasLtMatmulPreferenceSetAttribute(workspace)");
        IntPointer align = new IntPointer(1);
        align.put(0, key.align());
        for (int attribute : new int[] {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
            check(cublas.cublasLtMatmulPreferenceSetAttribute(pref, attribute, align, 4), "cublasLtMatmulPreferenceSetAttribute(alignment)");
        }
        p.algo = new cublasLtMatmulHeuristicResult_t();
        int[] found = new int[1];
        check(cublas.cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, p.algo, found),
                "cublasLtMatmulAlgoGetHeuristic(" + key + ")");
        cublas.cublasLtMatmulPreferenceDestroy(pref);
        if (found[0] == 0) {
            throw new CudaException("cuBLASLt has no algorithm for " + key);
        }
        return p;
    }

    private static cublasLtMatrixLayoutOpaque_t layout(DType t, long rows, long cols, long ld) {
        PointerPointer<Pointer> out = new PointerPointer<>(1);
        check(cublas.cublasLtMatrixLayoutCreate(out, cudaType(t), rows, cols, ld),
                "cublasLtMatrixLayoutCreate(" + t + " " + rows + " x " + cols + ", ld " + ld + ")");
        return new cublasLtMatrixLayoutOpaque_t(out.get(0));
    }

    @Override
    public void close() {
        for (Plan p : plans.values()) {
            cublas.cublasLtMatrixLayoutDestroy(p.a);
            cublas.cublasLtMatrixLayoutDestroy(p.b);
            cublas.cublasLtMatrixLayoutDestroy(p.d);
            cublas.cublasLtMatmulDescDestroy(p.desc);
        }
        plans.clear();
        cublas.cublasLtDestroy(handle);
        device.release(workspace);
        device.release(fp8Scales);
    }
}
