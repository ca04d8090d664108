package org.sparkatron.comm;

import java.nio.ByteBuffer;
import org.sparkatron.precision.HalfFloats;
import org.sparkatron.tensor.DType;

/**
 * Element-wise reduction kernels on native-order off-heap buffers, shared by every CPU communicator.
 * Stateless and thread-safe. Buffers are addressed by absolute byte offsets; positions are ignored.
 */
public final class Reductions {
    /** Vector API present (and not disabled with -Dsparkatron.simd=false); checked without loading it. */
    private static final boolean SIMD = ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()
            && !"false".equals(System.getProperty("sparkatron.simd"));

    private Reductions() {
    }

    /** Throws unless {@code dtype} is one of the communicator dtypes (F32, F64, BF16, F16, I32, I64). */
    public static void checkSupported(DType dtype) {
        if (dtype != DType.F32 && dtype != DType.F64 && dtype != DType.BF16 && dtype != DType.F16 && dtype != DType.I32
                && dtype != DType.I64) {
            throw new IllegalArgumentException("communicators support F32, F64, BF16, F16, I32, I64; got " + dtype);
        }
    }

    /** dst[i] = dst[i] op src[i] for i in [0, n) (AVG accumulates as SUM; see {@link #finishAverage}). */
    public static void accumulate(DType dtype, ReduceOp op, ByteBuffer dst, int dstOff, ByteBuffer src, int srcOff,
                                  int n) {
        switch (dtype) {
            case F32 -> {
                if (SIMD) {
                    SimdReductions.accumulateF32(op == ReduceOp.MAX ? 1 : op == ReduceOp.MIN ? 2 : 0, dst, dstOff, src,
                            srcOff, n);
                    return;
                }
                for (int i = 0; i < n; i++) {
                    int d = dstOff + 4 * i;
                    dst.putFloat(d, apply(op, dst.getFloat(d), src.getFloat(srcOff + 4 * i)));
                }
            }
            case F64 -> {
                for (int i = 0; i < n; i++) {
                    int d = dstOff + 8 * i;
                    double a = dst.getDouble(d);
                    double b = src.getDouble(srcOff + 8 * i);
                    dst.putDouble(d, switch (op) {
                        case SUM, AVG -> a + b;
                        case MAX -> Math.max(a, b);
                        case MIN -> Math.min(a, b);
                    });
                }
            }
            case BF16 -> {
                for (int i = 0; i < n; i++) {
                    int d = dstOff + 2 * i;
                    float v = apply(op, bf16ToFloat(dst.getShort(d)), bf16ToFloat(src.getShort(srcOff + 2 * i)));
                    dst.putShort(d, floatToBf16(v));
                }
            }
            case F16 -> {
                for (int i = 0; i < n; i++) {
                    int d = dstOff + 2 * i;
                    float v = apply(op, f16ToFloat(dst.getShort(d)), f16ToFloat(src.getShort(srcOff + 2 * i)));
                    dst.putShort(d, floatToF16(v));
                }
            }
            case I32 -> {
                for (int i = 0; i < n; i++) {
                    int d = dstOff + 4 * i;
                    int a = dst.getInt(d);
                    int b = src.getInt(srcOff + 4 * i);
                    dst.putInt(d, switch (op) {
                        case SUM, AVG -> a + b;
                        case MAX -> Math.max(a, b);
                        case MIN -> Math.min(a, b);
                    });
                }
            }
            case I64 -> {
                for (int i = 0; i < n; i++) {
                    int d = dstOff + 8 * i;
                    long a = dst.getLong(d);
                    long b = src.getLong(srcOff + 8 * i);
                    dst.putLong(d, switch (op) {
                        case SUM, AVG -> a + b;
                        case MAX -> Math.max(a, b);
                        case MIN -> Math.min(a, b);
                    });
                }
            }
            default -> throw new IllegalArgumentException("unsupported dtype " + dtype);
        }
    }

    /** Elements per block of {@link #reduce}: the block being reduced stays in L1 while every source passes. */
    private static final int REDUCE_BLOCK_BYTES = 16 << 10;

    /**
     * {@code out = first op srcs[0] op srcs[1] ...}, left to right, element-wise over {@code n} elements, and
     * the same result also into {@code copy} when it is not null: one pass over the inputs instead of a
     * pass per source plus a copy. Bitwise the same as copying {@code first} to {@code out}, then
     * {@link #accumulate}-ing each source in order (it does exactly that, block by block, so each block of
     * {@code out} is read back from L1, not from memory). {@code out} may be {@code first} at the same offset
     * (in place); the sources and {@code copy} must not overlap {@code out}.
     */
    public static void reduce(DType dtype, ReduceOp op, ByteBuffer first, int firstOff, ByteBuffer[] srcs, int[] srcOffs,
                              int n, ByteBuffer out, int outOff, ByteBuffer copy, int copyOff) {
        int es = dtype.bytes();
        int block = REDUCE_BLOCK_BYTES / es;
        boolean inPlace = out == first && outOff == firstOff;
        for (int lo = 0; lo < n; lo += block) {
            int bl = Math.min(block, n - lo);
            int at = lo * es;
            if (!inPlace) {
                out.put(outOff + at, first, firstOff + at, bl * es);
            }
            for (int k = 0; k < srcs.length; k++) {
                accumulate(dtype, op, out, outOff + at, srcs[k], srcOffs[k] + at, bl);
            }
            if (copy != null) {
                copy.put(copyOff + at, out, outOff + at, bl * es);
            }
        }
    }

    /** For AVG: divides the n elements at {@code off} by {@code groupSize} (integers truncate toward zero). */
    public static void finishAverage(DType dtype, ByteBuffer buf, int off, int n, int groupSize) {
        for (int i = 0; i < n; i++) {
            switch (dtype) {
                // Division, not multiplication by 1/n, so AVG of equal values is exact for every group size.
                case F32 -> buf.putFloat(off + 4 * i, buf.getFloat(off + 4 * i) / groupSize);
                case F64 -> buf.putDouble(off + 8 * i, buf.getDouble(off + 8 * i) / groupSize);
                case BF16 -> buf.putShort(off + 2 * i, floatToBf16(bf16ToFloat(buf.getShort(off + 2 * i)) / groupSize));
                case F16 -> buf.putShort(off + 2 * i, floatToF16(f16ToFloat(buf.getShort(off + 2 * i)) / groupSize));
                case I32 -> buf.putInt(off + 4 * i, buf.getInt(off + 4 * i) / groupSize);
                case I64 -> buf.putLong(off + 8 * i, buf.getLong(off + 8 * i) / groupSize);
                default -> throw new IllegalArgumentException("unsupported dtype " + dtype);
            }
        }
    }

    private static float apply(ReduceOp op, float a, float b) {
        return switch (op) {
            case SUM, AVG -> a + b;
            // Math.max/min propagate NaN, as torch and NCCL do.
            case MAX -> Math.max(a, b);
            case MIN -> Math.min(a, b);
        };
    }

    // The 16-bit conversions live in HalfFloats (one implementation for the whole project); these
    // delegates keep the communicators' call sites short.

    /** See {@link HalfFloats#bf16ToFloat}. */
    public static float bf16ToFloat(short bits) {
        return HalfFloats.bf16ToFloat(bits);
    }

    /** See {@link HalfFloats#floatToBf16}. */
    public static short floatToBf16(float f) {
        return HalfFloats.floatToBf16(f);
    }

    /** See {@link HalfFloats#f16ToFloat}. */
    public static float f16ToFloat(short h) {
        return HalfFloats.f16ToFloat(h);
    }

    /** See {@link HalfFloats#floatToF16}. */
    public static short floatToF16(float f) {
        return HalfFloats.floatToF16(f);
    }
}
