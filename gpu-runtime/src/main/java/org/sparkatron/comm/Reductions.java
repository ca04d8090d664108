package org.sparkatron.comm;

import java.nio.ByteBuffer;
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

    /** Throws unless {@code dtype} is one of the communicator dtypes (F32, BF16, F16, I32, I64). */
    public static void checkSupported(DType dtype) {
        if (dtype != DType.F32 && dtype != DType.BF16 && dtype != DType.F16 && dtype != DType.I32
                && dtype != DType.I64) {
            throw new IllegalArgumentException("communicators support F32, BF16, F16, I32, I64; got " + dtype);
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

    /** For AVG: divides the n elements at {@code off} by {@code groupSize} (integers truncate toward zero). */
    public static void finishAverage(DType dtype, ByteBuffer buf, int off, int n, int groupSize) {
        for (int i = 0; i < n; i++) {
            switch (dtype) {
                // Division, not multiplication by 1/n, so AVG of equal values is exact for every group size.
                case F32 -> buf.putFloat(off + 4 * i, buf.getFloat(off + 4 * i) / groupSize);
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

    /** bf16 bits (upper half of an fp32) to float: exact. */
    public static float bf16ToFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xffff) << 16);
    }

    /** float to bf16 by round-to-nearest-even; NaN stays a (quiet) NaN. */
    public static short floatToBf16(float f) {
        int x = Float.floatToRawIntBits(f);
        if ((x & 0x7fffffff) > 0x7f800000) {
            return (short) ((x >>> 16) | 0x40);
        }
        int rounding = 0x7fff + ((x >>> 16) & 1);
        return (short) ((x + rounding) >>> 16);
    }

    /** IEEE binary16 bits to float: exact (subnormals, infinities and NaN included). */
    public static float f16ToFloat(short h) {
        int bits = h & 0xffff;
        int sign = (bits & 0x8000) << 16;
        int exp = (bits >>> 10) & 0x1f;
        int mant = bits & 0x3ff;
        if (exp == 0x1f) {
            return Float.intBitsToFloat(sign | 0x7f800000 | (mant << 13));
        }
        if (exp == 0) {
            // Subnormal: mant * 2^-24, exact in float.
            float v = mant * 0x1p-24f;
            return sign != 0 ? -v : v;
        }
        return Float.intBitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
    }

    /** float to IEEE binary16 by round-to-nearest-even, with overflow to infinity and gradual underflow. */
    public static short floatToF16(float f) {
        int x = Float.floatToRawIntBits(f);
        int sign = (x >>> 16) & 0x8000;
        int abs = x & 0x7fffffff;
        if (abs >= 0x7f800000) {
            return (short) (sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 | ((abs >>> 13) & 0x3ff) : 0));
        }
        if (abs >= 0x477ff000) {
            // >= 65520 rounds to infinity under round-to-nearest-even.
            return (short) (sign | 0x7c00);
        }
        if (abs < 0x38800000) {
            // Result is subnormal (or zero) in f16: scale so that the f16 quantum 2^-24 becomes 1 and round.
            float a = Float.intBitsToFloat(abs);
            int m = (int) Math.rint(a * 0x1p24f);
            return (short) (sign | m);
        }
        int e = ((abs >>> 23) - 112) << 10;
        int mant = abs & 0x7fffff;
        int h = e | (mant >>> 13);
        int rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1)) {
            h++;
        }
        return (short) (sign | h);
    }
}
