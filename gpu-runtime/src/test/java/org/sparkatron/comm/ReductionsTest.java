package org.sparkatron.comm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.tensor.DType;

/** Half-precision conversions against brute-force nearest-even references; the reduction kernel per dtype. */
@Timeout(60)
class ReductionsTest {
    @Test
    void f16RoundTripsEveryValueExactly() {
        for (int h = 0; h < 65536; h++) {
            float f = Reductions.f16ToFloat((short) h);
            if (Float.isNaN(f)) {
                assertTrue((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0, "NaN only from NaN encodings: " + h);
                assertTrue(Float.isNaN(Reductions.f16ToFloat(Reductions.floatToF16(f))));
                continue;
            }
            assertEquals(h, Reductions.floatToF16(f) & 0xffff, "f16 0x" + Integer.toHexString(h) + " = " + f);
        }
    }

    @Test
    void floatToF16AndBf16RoundToNearestEven() {
        Random rnd = new Random(7);
        for (int k = 0; k < 200_000; k++) {
            // Mix of magnitudes: subnormal, normal and overflowing halves, and random bit patterns.
            float f = k % 2 == 0 ? (float) (rnd.nextGaussian() * Math.pow(2, rnd.nextInt(40) - 26))
                    : Float.intBitsToFloat(rnd.nextInt());
            if (Float.isNaN(f)) {
                continue;
            }
            checkNearestEven(f, Reductions.floatToF16(f), true);
            checkNearestEven(f, Reductions.floatToBf16(f), false);
        }
        // Ties: 1 + 2^-11 lies halfway between 1 and the next half; even mantissa (1.0) wins.
        assertEquals(0x3c00, Reductions.floatToF16(1 + 0x1p-11f));
        assertEquals(0x3c02, Reductions.floatToF16(1 + 3 * 0x1p-11f));
        assertEquals(0x7c00, Reductions.floatToF16(65520f));
        assertEquals(0x7bff, Reductions.floatToF16(65519f));
        assertEquals(0x3f80, Reductions.floatToBf16(1 + 0x1p-8f));
        assertEquals(0x3f82, Reductions.floatToBf16(1 + 3 * 0x1p-8f));
    }

    /** The chosen encoding is the nearest representable value, ties to an even mantissa. */
    private static void checkNearestEven(float f, short bits, boolean half) {
        double x = f;
        int h = bits & 0xffff;
        double got = half ? Reductions.f16ToFloat(bits) : Reductions.bf16ToFloat(bits);
        if (Double.isInfinite(got)) {
            double max = half ? 65504.0 : Float.intBitsToFloat(0x7f7f0000);
            double ulpAtMax = half ? 32.0 : Math.ulp(Float.intBitsToFloat(0x7f7f0000)) * 65536;
            assertTrue(Math.abs(x) >= max + ulpAtMax / 2, "overflow only past the halfway point: " + f);
            return;
        }
        for (int d : new int[] {-1, 1}) {
            int nb = (h & 0x7fff) + d;
            if (nb < 0 || nb > (half ? 0x7bff : 0x7f7f)) {
                continue;
            }
            short n = (short) ((h & 0x8000) | nb);
            double other = half ? Reductions.f16ToFloat(n) : Reductions.bf16ToFloat(n);
            double dg = Math.abs(x - got);
            double dn = Math.abs(x - other);
            assertTrue(dg < dn || (dg == dn && (h & 1) == 0), "0x" + Integer.toHexString(h) + " for " + f
                    + " (neighbour " + other + ")");
        }
    }

    @Test
    void accumulateAndAverageEveryDtype() {
        for (DType dt : new DType[] {DType.F32, DType.BF16, DType.F16, DType.I32, DType.I64}) {
            for (ReduceOp op : ReduceOp.values()) {
                ByteBuffer a = ByteBuffer.allocateDirect(8 * 3).order(ByteOrder.nativeOrder());
                ByteBuffer b = ByteBuffer.allocateDirect(8 * 3).order(ByteOrder.nativeOrder());
                double[] x = {3, -5, 7};
                double[] y = {-4, 6, 7};
                for (int i = 0; i < 3; i++) {
                    put(a, dt, i, x[i]);
                    put(b, dt, i, y[i]);
                }
                Reductions.accumulate(dt, op, a, 0, b, 0, 3);
                if (op == ReduceOp.AVG) {
                    Reductions.finishAverage(dt, a, 0, 3, 2);
                }
                for (int i = 0; i < 3; i++) {
                    double want = switch (op) {
                        case SUM -> x[i] + y[i];
                        case MAX -> Math.max(x[i], y[i]);
                        case MIN -> Math.min(x[i], y[i]);
                        // Integers truncate toward zero: (3 + -4) / 2 = 0, (-5 + 6) / 2 = 0.
                        case AVG -> dt.isFloatingPoint() ? (x[i] + y[i]) / 2 : (long) (x[i] + y[i]) / 2;
                    };
                    assertEquals(want, get(a, dt, i), dt + " " + op + " element " + i);
                }
            }
        }
    }

    private static void put(ByteBuffer b, DType dt, int i, double v) {
        switch (dt) {
            case F32 -> b.putFloat(4 * i, (float) v);
            case BF16 -> b.putShort(2 * i, Reductions.floatToBf16((float) v));
            case F16 -> b.putShort(2 * i, Reductions.floatToF16((float) v));
            case I32 -> b.putInt(4 * i, (int) v);
            default -> b.putLong(8 * i, (long) v);
        }
    }

    private static double get(ByteBuffer b, DType dt, int i) {
        return switch (dt) {
            case F32 -> b.getFloat(4 * i);
            case BF16 -> Reductions.bf16ToFloat(b.getShort(2 * i));
            case F16 -> Reductions.f16ToFloat(b.getShort(2 * i));
            case I32 -> b.getInt(4 * i);
            default -> b.getLong(8 * i);
        };
    }
}
