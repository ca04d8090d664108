package org.sparkatron.precision;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * {@link Fp8Format} against an independent implementation and a brute-force reference:
 *
 * <ul>
 *   <li>all 256 codes of each format decode to the value ml_dtypes 0.6.0 gives (fixture
 *       {@code fp8/<fmt>_codes.tsv}, made by {@code src/test/python/make_fp8_fixtures.py});</li>
 *   <li>every midpoint between neighbouring values, the float32 values on either side of it, the edges
 *       and 6000 random values (both signs) encode to ml_dtypes' code of the saturated input
 *       ({@code fp8/<fmt>_casts.tsv});</li>
 *   <li>every 1021st float32 bit pattern (4.2 million per format) encodes to the code a search over the 254
 *       finite values finds (nearest in double, ties to the even code, saturation), and every code
 *       round-trips;</li>
 *   <li>the named cases: ties, saturation, infinities, NaN, zero signs, subnormals.</li>
 * </ul>
 */
class Fp8FormatTest {
    private static List<String[]> rows(String name) throws IOException {
        List<String[]> out = new ArrayList<>();
        try (BufferedReader r = new BufferedReader(new InputStreamReader(
                Fp8FormatTest.class.getResourceAsStream("/fp8/" + name), StandardCharsets.UTF_8))) {
            for (String line = r.readLine(); line != null; line = r.readLine()) {
                if (!line.startsWith("#") && !line.isBlank()) {
                    out.add(line.split("\t"));
                }
            }
        }
        return out;
    }

    private static String file(Fp8Format f) {
        return f == Fp8Format.E4M3 ? "e4m3" : "e5m2";
    }

    @ParameterizedTest
    @EnumSource(Fp8Format.class)
    void allCodesDecodeAsMlDtypes(Fp8Format f) throws IOException {
        List<String[]> table = rows(file(f) + "_codes.tsv");
        assertEquals(256, table.size());
        for (String[] row : table) {
            int code = Integer.parseInt(row[0], 16);
            float expected = Float.intBitsToFloat((int) Long.parseLong(row[1], 16));
            float got = f.decode(code);
            if (Float.isNaN(expected)) {
                assertTrue(Float.isNaN(got), f + " code " + row[0] + " must be NaN, got " + got);
            } else {
                assertEquals(Float.floatToIntBits(expected), Float.floatToIntBits(got), f + " code " + row[0]);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(Fp8Format.class)
    void castsMatchMlDtypesWithSaturation(Fp8Format f) throws IOException {
        List<String[]> cases = rows(file(f) + "_casts.tsv");
        assertTrue(cases.size() > 12000, "fixture too small: " + cases.size());
        for (String[] c : cases) {
            float x = Float.intBitsToFloat((int) Long.parseLong(c[0], 16));
            int got = f.encode(x);
            if (c[1].equals("nan")) {
                assertTrue(Float.isNaN(f.decode(got)), f + ": NaN input " + c[0] + " gave code " + Integer.toHexString(got));
            } else {
                assertEquals(Integer.parseInt(c[1], 16), got, () -> f + ": " + x + " (bits " + c[0] + ")");
            }
        }
    }

    /** Nearest finite value by search, in double; ties to the code whose mantissa LSB is 0; saturating. */
    private static int reference(Fp8Format f, float x) {
        if (Float.isNaN(x)) {
            return -1;
        }
        int sign = x < 0 || (x == 0 && 1 / x < 0) ? 0x80 : 0;
        double a = Math.abs((double) x);
        if (a >= f.max()) {
            return sign | f.maxCode();
        }
        int best = 0;
        double bestErr = Double.POSITIVE_INFINITY;
        for (int c = 0; c <= f.maxCode(); c++) {
            double err = Math.abs(a - f.decode(c));
            if (err < bestErr || (err == bestErr && (c & 1) == 0)) {
                best = c;
                bestErr = err;
            }
        }
        return sign | best;
    }

    @ParameterizedTest
    @EnumSource(Fp8Format.class)
    void sweepOfFloat32AgainstSearch(Fp8Format f) {
        // the search is monotone in |x|: cache the decision boundaries instead of scanning 127 codes per value
        double[] upper = new double[f.maxCode() + 1]; // upper[c]: the largest |x| that still rounds to c
        for (int c = 0; c < f.maxCode(); c++) {
            upper[c] = (f.decode(c) + (double) f.decode(c + 1)) / 2;
        }
        for (long bits = 0; bits <= 0xffffffffL; bits += 1021) {
            float x = Float.intBitsToFloat((int) bits);
            int got = f.encode(x);
            if (Float.isNaN(x)) {
                assertTrue(Float.isNaN(f.decode(got)));
                continue;
            }
            double a = Math.abs((double) x);
            int c = lowestAtLeast(upper, f.maxCode(), a); // the first code whose upper boundary is >= |x|
            int sign = (got & 0x80);
            int expected = a >= f.max() ? f.maxCode() : c;
            if (c < f.maxCode() && a == upper[c] && (c & 1) == 1) {
                expected = c + 1; // a tie goes to the even code
            }
            assertEquals((int) (bits >>> 31) << 7, sign, "sign of " + x);
            if ((got & 0x7f) != expected) {
                assertEquals(reference(f, x), got, () -> f + ": " + x); // a readable failure from the plain search
            }
        }
        for (int c = 0; c < 256; c++) {
            float v = f.decode(c);
            if (!Float.isNaN(v) && !Float.isInfinite(v)) {
                assertEquals(c, f.encode(v), f + " code " + Integer.toHexString(c) + " round trip");
            }
        }
    }

    private static int lowestAtLeast(double[] upper, int count, double a) {
        int lo = 0;
        int hi = count; // upper[count] is unused: everything beyond the last boundary is the max code
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (upper[mid] >= a) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        return lo;
    }

    @ParameterizedTest
    @EnumSource(Fp8Format.class)
    void namedCases(Fp8Format f) {
        float max = f.max();
        assertEquals(f == Fp8Format.E4M3 ? 448f : 57344f, max);
        assertEquals(f == Fp8Format.E4M3 ? 0x7e : 0x7b, f.maxCode());
        assertEquals(f == Fp8Format.E4M3 ? 0x1p-9f : 0x1p-16f, f.minSubnormal());
        assertEquals(f == Fp8Format.E4M3 ? 0x1p-6f : 0x1p-14f, f.minNormal());
        // saturation: anything beyond max, infinities included
        for (float big : new float[] {max, Math.nextUp(max), 2 * max, 1e30f, Float.MAX_VALUE, Float.POSITIVE_INFINITY}) {
            assertEquals(f.maxCode(), f.encode(big), "+" + big);
            assertEquals(0x80 | f.maxCode(), f.encode(-big), "-" + big);
        }
        // the step above max: E4M3 448 -> (480), tie 464 goes to even 448; E5M2 57344 -> (61440 = 2^16 ... ) saturates
        float ulpAtMax = max - f.decode(f.maxCode() - 1);
        assertEquals(f.maxCode(), f.encode(max + ulpAtMax / 2));
        // NaN in, NaN out, both signs
        assertTrue(Float.isNaN(f.decode(f.encode(Float.NaN))));
        assertTrue(Float.isNaN(f.decode(f.encode(Float.intBitsToFloat(0xffc00000)))));
        // zeros keep their sign; half the smallest subnormal is a tie to (even) zero; just above it, the subnormal
        float sub = f.minSubnormal();
        assertEquals(0x00, f.encode(0f));
        assertEquals(0x80, f.encode(-0f));
        assertEquals(0x00, f.encode(sub / 2));
        assertEquals(0x80, f.encode(-sub / 2));
        assertEquals(0x01, f.encode(Math.nextUp(sub / 2)));
        assertEquals(0x81, f.encode(-Math.nextUp(sub / 2)));
        // 1.5 x smallest subnormal: tie between codes 1 (odd) and 2 (even) -> 2; 2.5x: between 2 and 3 -> 2
        assertEquals(0x02, f.encode(1.5f * sub));
        assertEquals(0x02, f.encode(2.5f * sub));
        // the largest subnormal and the smallest normal are neighbours
        int lastSub = (1 << f.mantissaBits()) - 1;
        assertEquals(f.minNormal() - sub, f.decode(lastSub));
        assertEquals(1 << f.mantissaBits(), f.encode(f.minNormal()));
        assertEquals(1 << f.mantissaBits(), f.encode(f.minNormal() - sub / 2)); // tie: odd last subnormal -> even normal
        // normal ties: 1 + half a step rounds to 1 (even), 1 + 1.5 steps rounds up to 1 + 2 steps
        float step = Math.scalb(1f, -f.mantissaBits());
        int one = f.encode(1f);
        assertEquals(1f, f.decode(one));
        assertEquals(one, f.encode(1f + step / 2));
        assertEquals(one + 2, f.encode(1f + 1.5f * step));
        assertEquals(one + 1, f.encode(Math.nextUp(1f + step / 2)));
        if (f == Fp8Format.E4M3) {
            assertEquals(0x7e, f.encode(464f)); // the tie above max goes to 448 (and saturation agrees)
            assertTrue(Float.isNaN(f.decode(0x7f)) && Float.isNaN(f.decode(0xff)), "S.1111.111 is NaN");
        } else {
            assertEquals(Float.POSITIVE_INFINITY, f.decode(0x7c));
            assertEquals(Float.NEGATIVE_INFINITY, f.decode(0xfc));
            assertEquals(0x7b, f.encode(61440f));
        }
    }
}
