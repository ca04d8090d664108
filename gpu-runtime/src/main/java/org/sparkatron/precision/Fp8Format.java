package org.sparkatron.precision;

import org.sparkatron.tensor.DType;

/**
 * The two 8-bit float formats of FP8 training (the OCP / NVIDIA formats Transformer Engine uses), with the
 * exact conversions the GPU applies:
 *
 * <ul>
 *   <li>{@link #E4M3} ({@code float8_e4m3fn}): 4 exponent bits (bias 7), 3 mantissa bits, no infinities;
 *       {@code S.1111.111} is NaN, the largest finite value is 448 ({@code 0x7E}), the smallest normal
 *       2^-6, the smallest subnormal 2^-9.</li>
 *   <li>{@link #E5M2} ({@code float8_e5m2}): 5 exponent bits (bias 15), 2 mantissa bits, IEEE-style
 *       infinities ({@code 0x7C}) and NaNs; the largest finite value is 57344 ({@code 0x7B}), the smallest
 *       normal 2^-14, the smallest subnormal 2^-16.</li>
 * </ul>
 *
 * <p>{@link #encode} is CUDA's {@code __nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...)}, the conversion
 * Transformer Engine's cast kernels apply: round to nearest, ties to even (in the subnormal range too);
 * magnitudes above the largest finite value, infinities included, saturate to it with their sign; values at
 * or below half the smallest subnormal become a zero of their sign; NaN stays NaN ({@code S.1111.111} for
 * E4M3; for E5M2 {@code S.11111.1x} with x the top payload bit). PyTorch's and ml_dtypes' casts agree on
 * every finite value within range but do not saturate (E4M3 overflow gives NaN, E5M2 infinity).
 *
 * <p>Stateless and thread-safe.
 */
public enum Fp8Format {
    E4M3(4, 3, 448f, DType.FP8_E4M3),
    E5M2(5, 2, 57344f, DType.FP8_E5M2);

    private final int exponentBits;
    private final int mantissaBits;
    private final int bias;
    private final float max;
    private final DType dtype;
    private final int maxCode;
    private final float minNormal;
    private final int subnormalShift; // scalb exponent that maps the subnormal range onto integers
    private final float[] values = new float[256];

    Fp8Format(int exponentBits, int mantissaBits, float max, DType dtype) {
        this.exponentBits = exponentBits;
        this.mantissaBits = mantissaBits;
        this.bias = (1 << (exponentBits - 1)) - 1;
        this.max = max;
        this.dtype = dtype;
        this.minNormal = Math.scalb(1f, 1 - bias);
        this.subnormalShift = bias - 1 + mantissaBits;
        for (int c = 0; c < 256; c++) {
            values[c] = decodeFields(c);
        }
        int m = 0;
        for (int c = 0; c < 128; c++) {
            if (Float.isFinite(values[c]) && values[c] == max) {
                m = c;
            }
        }
        this.maxCode = m;
    }

    /** The largest finite magnitude: 448 (E4M3) or 57344 (E5M2). */
    public float max() {
        return max;
    }

    /** The code of {@link #max()} ({@code 0x7E} or {@code 0x7B}). */
    public int maxCode() {
        return maxCode;
    }

    /** The smallest positive normal value: 2^-6 (E4M3) or 2^-14 (E5M2). */
    public float minNormal() {
        return minNormal;
    }

    /** The smallest positive subnormal value: 2^-9 (E4M3) or 2^-16 (E5M2). */
    public float minSubnormal() {
        return Math.scalb(1f, 1 - bias - mantissaBits);
    }

    public int exponentBits() {
        return exponentBits;
    }

    public int mantissaBits() {
        return mantissaBits;
    }

    /** The tensor element type of this format's codes. */
    public DType dtype() {
        return dtype;
    }

    /** The format of FP8 codes of dtype {@code t}; refuses other dtypes. */
    public static Fp8Format of(DType t) {
        for (Fp8Format f : values()) {
            if (f.dtype == t) {
                return f;
            }
        }
        throw new IllegalArgumentException("not an FP8 dtype: " + t);
    }

    /** The value of code {@code code} (its low 8 bits): exact in fp32; NaN for NaN codes, infinities for E5M2's. */
    public float decode(int code) {
        return values[code & 0xff];
    }

    private float decodeFields(int code) {
        boolean negative = (code & 0x80) != 0;
        int e = (code >>> mantissaBits) & ((1 << exponentBits) - 1);
        int m = code & ((1 << mantissaBits) - 1);
        int eMax = (1 << exponentBits) - 1;
        float v;
        if (exponentBits == 4 && e == eMax && m == (1 << mantissaBits) - 1) {
            v = Float.NaN; // E4M3 (fn): only S.1111.111 is NaN, no infinities
        } else if (exponentBits == 5 && e == eMax) {
            v = m == 0 ? Float.POSITIVE_INFINITY : Float.NaN;
        } else if (e == 0) {
            v = Math.scalb((float) m, 1 - bias - mantissaBits);
        } else {
            v = Math.scalb(1f + Math.scalb((float) m, -mantissaBits), e - bias);
        }
        return negative ? -v : v;
    }

    /**
     * The code nearest to {@code f} (ties to even), saturating to {@code +-max()}; see the class comment for
     * zeros, infinities and NaN. Returns the code in the low 8 bits.
     */
    public int encode(float f) {
        int bits = Float.floatToRawIntBits(f);
        int sign = (bits >>> 24) & 0x80;
        int abs = bits & 0x7fffffff;
        if (abs > 0x7f800000) { // NaN
            return exponentBits == 4 ? sign | 0x7f : sign | 0x7e | ((abs >>> 21) & 0x3);
        }
        float a = Float.intBitsToFloat(abs);
        if (a >= max) { // saturate (infinity included); everything between max and the next step rounds down anyway
            return sign | maxCode;
        }
        if (a < minNormal) {
            // subnormal range: a / minSubnormal is exact in float (a power-of-two scaling), rint is ties-to-even;
            // a result of 2^m is the smallest normal's code, which is right
            return sign | (int) Math.rint(Math.scalb(a, subnormalShift));
        }
        int shift = 23 - mantissaBits;
        int rounded = abs + (1 << (shift - 1)) - 1 + ((abs >>> shift) & 1); // round half to even on the dropped bits
        rounded &= ~((1 << shift) - 1); // a < max: rounding up reaches max at most
        int exp = (rounded >>> 23) - 127 + bias;
        int mant = (rounded >>> shift) & ((1 << mantissaBits) - 1);
        return sign | (exp << mantissaBits) | mant;
    }

    /** {@code f} rounded to this format (saturating), as a float: {@code decode(encode(f))}. */
    public float round(float f) {
        return decode(encode(f));
    }

    /** Parses {@code e4m3 | e5m2} (case-insensitive). */
    public static Fp8Format parse(String s) {
        String t = s == null ? "" : s.trim().toLowerCase(java.util.Locale.ROOT);
        return switch (t) {
            case "e4m3" -> E4M3;
            case "e5m2" -> E5M2;
            default -> throw new IllegalArgumentException("fp8 format must be e4m3 or e5m2, got '" + s + "'");
        };
    }
}
