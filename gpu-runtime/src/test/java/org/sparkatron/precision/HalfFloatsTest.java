package org.sparkatron.precision;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.comm.Reductions;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The 16-bit conversions against an independent reference in double precision: every one of the 65536
 * bf16 and fp16 bit patterns decodes to the value its fields define and encodes back to itself; every
 * midpoint between two neighbouring 16-bit values rounds to the even one, and anything off the midpoint
 * by one fp32 ulp to the nearer one; random fp32 values round to the nearest 16-bit value; overflow,
 * underflow, subnormals, signed zeros, infinities and NaN. Exact comparisons throughout: conversions are
 * exactly specified, so there is no tolerance.
 */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
class HalfFloatsTest {
    /** The value of a bf16 bit pattern from its fields, in double (NaN for NaN patterns). */
    static double bf16Ref(int h) {
        return decode(h, 8, 7);
    }

    static double f16Ref(int h) {
        return decode(h, 5, 10);
    }

    /** IEEE decode of a 16-bit pattern with {@code e} exponent bits and {@code m} mantissa bits. */
    static double decode(int h, int e, int m) {
        int sign = (h >>> 15) & 1;
        int exp = (h >>> m) & ((1 << e) - 1);
        int mant = h & ((1 << m) - 1);
        int bias = (1 << (e - 1)) - 1;
        double v;
        if (exp == (1 << e) - 1) {
            v = mant == 0 ? Double.POSITIVE_INFINITY : Double.NaN;
        } else if (exp == 0) {
            v = mant * Math.pow(2, 1 - bias - m);
        } else {
            v = (1 + mant / Math.pow(2, m)) * Math.pow(2, exp - bias);
        }
        return sign == 1 ? -v : v;
    }

    static float toFloat(int h, boolean bf16) {
        return bf16 ? HalfFloats.bf16ToFloat((short) h) : HalfFloats.f16ToFloat((short) h);
    }

    static int encode(float f, boolean bf16) {
        return (bf16 ? HalfFloats.floatToBf16(f) : HalfFloats.floatToF16(f)) & 0xffff;
    }

    @Test
    void everyBitPatternDecodesExactlyAndRoundTrips() {
        for (boolean bf16 : new boolean[] {true, false}) {
            for (int h = 0; h < 65536; h++) {
                double want = bf16 ? bf16Ref(h) : f16Ref(h);
                float f = toFloat(h, bf16);
                String at = (bf16 ? "bf16" : "fp16") + " 0x" + Integer.toHexString(h);
                if (Double.isNaN(want)) {
                    assertTrue(Float.isNaN(f), at + " is NaN");
                    int back = encode(f, bf16);
                    assertTrue(Float.isNaN(toFloat(back, bf16)), at + " stays NaN");
                    assertEquals(h & 0x8000, back & 0x8000, at + " keeps its sign");
                    continue;
                }
                assertEquals(want, f, 0.0, at);
                assertEquals(Double.doubleToRawLongBits(want) >>> 63, (long) (Float.floatToRawIntBits(f) >>> 31), at + " sign");
                assertEquals(h, encode(f, bf16), at + " round-trips");
                assertEquals(Float.floatToRawIntBits(f), Float.floatToRawIntBits(bf16 ? HalfFloats.roundToBf16(f)
                        : HalfFloats.roundToF16(f)), at + " is a fixed point of rounding");
            }
        }
    }

    @Test
    void midpointsRoundToEvenAndNeighboursToTheNearer() {
        for (boolean bf16 : new boolean[] {true, false}) {
            int maxFinite = bf16 ? 0x7f7f : 0x7bff;
            for (int h = 0; h < maxFinite; h++) { // positive finite pairs (h, h + 1); negatives by symmetry below
                double lo = bf16 ? bf16Ref(h) : f16Ref(h);
                double hi = bf16 ? bf16Ref(h + 1) : f16Ref(h + 1);
                float mid = (float) ((lo + hi) / 2);
                assertEquals((lo + hi) / 2, mid, 0.0, "midpoint is exact in fp32");
                int even = (h & 1) == 0 ? h : h + 1;
                String at = (bf16 ? "bf16" : "fp16") + " between 0x" + Integer.toHexString(h) + " and its successor";
                assertEquals(even, encode(mid, bf16), at + ": tie to even");
                assertEquals(even | 0x8000, encode(-mid, bf16), at + ": negative tie to even");
                assertEquals(h, encode(Math.nextDown(mid), bf16), at + ": below the midpoint");
                assertEquals(h + 1, encode(Math.nextUp(mid), bf16), at + ": above the midpoint");
            }
        }
    }

    @Test
    void randomFloatsRoundToTheNearest() {
        SplittableRandom rng = new SplittableRandom(3);
        for (int i = 0; i < 400_000; i++) {
            float f = Float.intBitsToFloat(rng.nextInt());
            if (Float.isNaN(f)) {
                continue;
            }
            for (boolean bf16 : new boolean[] {true, false}) {
                double got = toFloat(encode(f, bf16), bf16);
                double want = nearest(f, bf16);
                assertEquals(want, got, 0.0, (bf16 ? "bf16" : "fp16") + " of " + f);
            }
        }
    }

    /** Reference round-to-nearest-even by search over the 16-bit values, in double. */
    static double nearest(float f, boolean bf16) {
        double x = f;
        int maxFinite = bf16 ? 0x7f7f : 0x7bff;
        double max = bf16 ? bf16Ref(maxFinite) : f16Ref(maxFinite);
        double ulpAtMax = max - (bf16 ? bf16Ref(maxFinite - 1) : f16Ref(maxFinite - 1));
        if (Math.abs(x) >= max + ulpAtMax / 2) {
            return x > 0 ? Double.POSITIVE_INFINITY : Double.NEGATIVE_INFINITY; // the tie at max + ulp/2 goes to "even" infinity
        }
        // binary search the largest pattern whose value is <= |x|
        int lo = 0;
        int hi = maxFinite;
        double a = Math.abs(x);
        while (lo < hi) {
            int mid = (lo + hi + 1) >>> 1;
            if ((bf16 ? bf16Ref(mid) : f16Ref(mid)) <= a) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        double below = bf16 ? bf16Ref(lo) : f16Ref(lo);
        double above = lo == maxFinite ? max + ulpAtMax : (bf16 ? bf16Ref(lo + 1) : f16Ref(lo + 1));
        double r;
        if (a - below < above - a) {
            r = below;
        } else if (a - below > above - a) {
            r = above;
        } else {
            r = (lo & 1) == 0 ? below : above;
        }
        return x < 0 || (x == 0 && 1 / x < 0) ? -r : r;
    }

    @Test
    void overflowUnderflowAndSpecialValues() {
        // fp16: 65504 is the largest finite; 65520 = 65504 + ulp/2 ties to "even" infinity
        assertEquals(0x7bff, encode(65504f, false));
        assertEquals(0x7bff, encode(Math.nextDown(65520f), false));
        assertEquals(0x7c00, encode(65520f, false));
        assertEquals(0xfc00, encode(-1e6f, false));
        assertEquals(Float.POSITIVE_INFINITY, HalfFloats.roundToF16(1e30f));
        // bf16: the largest finite is 0x7f7f (3.3895e38); Float.MAX_VALUE rounds up to infinity
        assertEquals(0x7f80, encode(Float.MAX_VALUE, true));
        assertEquals(0x7f7f, encode(Float.intBitsToFloat(0x7f7f7fff), true));
        assertEquals(0x7f80, encode(Float.intBitsToFloat(0x7f7f8000), true)); // tie, odd 0x7f7f -> up to infinity
        // fp16 subnormals: 2^-24 is the smallest; 2^-25 ties between 0 and it, to even 0; 3 * 2^-25 ties to 2
        assertEquals(0x0001, encode(0x1p-24f, false));
        assertEquals(0x0000, encode(0x1p-25f, false));
        assertEquals(0x8000, encode(-0x1p-25f, false));
        assertEquals(0x0001, encode(Math.nextUp(0x1p-25f), false));
        assertEquals(0x0002, encode(3 * 0x1p-25f, false));
        assertEquals(0x0400, encode(Math.nextDown(0x1p-14f), false)); // rounds up into the smallest normal
        assertEquals(0x03ff, encode(0x3ffp-24f, false));
        // bf16 keeps fp32's range: fp32 subnormals round to bf16 subnormals
        assertEquals(0x0000, encode(Float.MIN_VALUE, true));
        assertEquals(0x0000, encode(Float.intBitsToFloat(0x00008000), true)); // tie to even 0
        assertEquals(0x0002, encode(Float.intBitsToFloat(0x00018000), true)); // tie to even 2
        assertEquals(0x0001, encode(Float.intBitsToFloat(0x00008001), true));
        // signed zeros, infinities and NaN
        assertEquals(0x8000, encode(-0f, true));
        assertEquals(0x8000, encode(-0f, false));
        assertEquals(0xff80, encode(Float.NEGATIVE_INFINITY, true));
        assertEquals(0x7c00, encode(Float.POSITIVE_INFINITY, false));
        float signalling = Float.intBitsToFloat(0x7f800001); // NaN whose payload lives in the bits bf16 drops
        assertTrue(Float.isNaN(HalfFloats.bf16ToFloat(HalfFloats.floatToBf16(signalling))), "a NaN never becomes infinity");
        assertTrue(Float.isNaN(HalfFloats.f16ToFloat(HalfFloats.floatToF16(signalling))), "a NaN never becomes infinity");
    }

    @Test
    void tensorRoundingMatchesScalarRoundingAndCommunicatorsUseTheSameConversions() {
        SplittableRandom rng = new SplittableRandom(11);
        int n = 10_000;
        Tensor t = Tensor.allocateHost(DType.F32, n);
        float[] src = new float[n];
        for (int i = 0; i < n; i++) {
            src[i] = i % 100 == 0 ? Float.intBitsToFloat(rng.nextInt()) : (float) (rng.nextGaussian() * Math.pow(10, rng.nextInt(-8, 8)));
        }
        for (Precision p : Precision.values()) {
            t.floats().put(0, src);
            p.round(t, n - 1); // the last element must stay untouched
            for (int i = 0; i < n; i++) {
                float want = i == n - 1 ? src[i] : p.round(src[i]);
                assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(t.floats().get(i)), p + " element " + i);
            }
        }
        assertThrows(IndexOutOfBoundsException.class, () -> Precision.BF16.round(t, n + 1));
        for (int i = 0; i < n; i++) {
            assertEquals(HalfFloats.floatToBf16(src[i]), Reductions.floatToBf16(src[i]));
            assertEquals(HalfFloats.floatToF16(src[i]), Reductions.floatToF16(src[i]));
        }
    }

    @Test
    void parsesPrecisionNames() {
        assertEquals(Precision.BF16, Precision.parse("bf16"));
        assertEquals(Precision.FP16, Precision.parse(" FP16 "));
        assertEquals(Precision.FP32, Precision.parse("fp32"));
        assertEquals(Precision.FP8, Precision.parse("fp8"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Precision.parse("fp4"));
        assertTrue(e.getMessage().contains("fp32, bf16, fp16 or fp8") && e.getMessage().contains("fp4"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> Precision.parse(null));
    }
}
