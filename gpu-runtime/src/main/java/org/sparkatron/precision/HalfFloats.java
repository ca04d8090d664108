package org.sparkatron.precision;

import java.nio.IntBuffer;
import org.sparkatron.tensor.Tensor;

/**
 * The project's one home for 16-bit float conversions: bfloat16 and IEEE binary16 ("fp16") bits to and
 * from fp32, and rounding fp32 values to the nearest value a 16-bit format can hold (kept in fp32, which
 * is how the CPU device emulates 16-bit storage). Used by the communicators' BF16/F16 reductions, the
 * safetensors reader and mixed-precision training.
 *
 * <p>All conversions to 16 bits round to nearest, ties to even (what CUDA's {@code __float2bfloat16} and
 * {@code __float2half} do). fp16: values of magnitude {@code >= 65520} become infinity (that overflow is
 * what dynamic loss scaling detects), values below {@code 2^-14} become subnormals (gradual underflow)
 * and below {@code 2^-25} zero. bf16 has fp32's exponent range, so only values within half a bf16 ulp of
 * {@code Float.MAX_VALUE} or above round to infinity; fp32 subnormals round to bf16 subnormals. NaN stays
 * NaN (quiet), keeping its sign and the top bits of its payload; infinities and signed zeros are kept.
 *
 * <p>Stateless and thread-safe.
 */
public final class HalfFloats {
    private HalfFloats() {
    }

    /** bf16 bits (the upper half of an fp32) to float: exact. */
    public static float bf16ToFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xffff) << 16);
    }

    /** float to bf16 bits by round-to-nearest-even; NaN stays a quiet NaN. */
    public static short floatToBf16(float f) {
        return (short) (roundBf16Bits(Float.floatToRawIntBits(f)) >>> 16);
    }

    /** IEEE binary16 bits to float: exact (subnormals, infinities and NaN payloads included). */
    public static float f16ToFloat(short h) {
        int bits = h & 0xffff;
        int sign = (bits & 0x8000) << 16;
        int exp = (bits >>> 10) & 0x1f;
        int mant = bits & 0x3ff;
        if (exp == 0x1f) {
            return Float.intBitsToFloat(sign | 0x7f800000 | (mant << 13));
        }
        if (exp == 0) {
            float v = mant * 0x1p-24f; // subnormal (or zero): mant * 2^-24, exact in float
            return sign != 0 ? -v : v;
        }
        return Float.intBitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
    }

    /** float to IEEE binary16 bits by round-to-nearest-even, with overflow to infinity and gradual underflow. */
    public static short floatToF16(float f) {
        int x = Float.floatToRawIntBits(f);
        int sign = (x >>> 16) & 0x8000;
        int abs = x & 0x7fffffff;
        if (abs >= 0x7f800000) {
            // infinity stays infinity; NaN keeps its top payload bits and is made quiet
            return (short) (sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 | ((abs >>> 13) & 0x3ff) : 0));
        }
        if (abs >= 0x477ff000) {
            // >= 65520 = 65504 + half an ulp rounds to infinity under round-to-nearest-even
            return (short) (sign | 0x7c00);
        }
        if (abs < 0x38800000) {
            // Below 2^-14 the result is subnormal (or zero): scale so the f16 quantum 2^-24 becomes 1
            // (exact: a power-of-two scaling of a normal float) and round half to even with rint.
            // 1024 (0x400) is the smallest normal, which the bit layout below handles naturally.
            int m = (int) Math.rint(Float.intBitsToFloat(abs) * 0x1p24f);
            return (short) (sign | m);
        }
        int e = ((abs >>> 23) - 112) << 10;
        int mant = abs & 0x7fffff;
        int h = e | (mant >>> 13);
        int rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1)) {
            h++; // a carry into the exponent is the correct rounding up (to the next binade or to infinity)
        }
        return (short) (sign | h);
    }

    /** The bf16 value nearest to {@code f} (ties to even), as a float. */
    public static float roundToBf16(float f) {
        return Float.intBitsToFloat(roundBf16Bits(Float.floatToRawIntBits(f)));
    }

    /** The fp16 value nearest to {@code f} (ties to even; infinity past 65504), as a float. */
    public static float roundToF16(float f) {
        return f16ToFloat(floatToF16(f));
    }

    /**
     * fp32 bits rounded to the nearest bf16, as fp32 bits with the low 16 bits clear. Adding
     * {@code 0x7fff + lsb} carries into bit 16 exactly when the discarded half exceeds half an ulp, or
     * equals it and the kept part is odd; a carry out of the mantissa bumps the exponent (to infinity at
     * the top), which is the correct rounding.
     */
    public static int roundBf16Bits(int x) {
        if ((x & 0x7fffffff) > 0x7f800000) {
            return (x | 0x00400000) & 0xffff0000; // NaN: quiet, keep the sign and the top payload bits
        }
        return (x + 0x7fff + ((x >>> 16) & 1)) & 0xffff0000;
    }

    /** Rounds {@code count} fp32 elements of {@code t}, from its first element, to bf16 values in place. */
    public static void roundToBf16(Tensor t, long count) {
        IntBuffer b = bits(t, count);
        for (int i = 0, n = (int) count; i < n; i++) {
            b.put(i, roundBf16Bits(b.get(i)));
        }
    }

    /** Rounds {@code count} fp32 elements of {@code t}, from its first element, to fp16 values in place. */
    public static void roundToF16(Tensor t, long count) {
        IntBuffer b = bits(t, count);
        for (int i = 0, n = (int) count; i < n; i++) {
            float f = Float.intBitsToFloat(b.get(i));
            b.put(i, Float.floatToRawIntBits(roundToF16(f)));
        }
    }

    private static IntBuffer bits(Tensor t, long count) {
        if (count < 0 || count > t.numel()) {
            throw new IndexOutOfBoundsException("cannot round " + count + " elements of a tensor of " + t.numel());
        }
        return t.hostBuffer().asIntBuffer();
    }
}
