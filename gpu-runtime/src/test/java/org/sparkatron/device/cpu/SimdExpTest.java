package org.sparkatron.device.cpu;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.SplittableRandom;
import jdk.incubator.vector.FloatVector;
import org.junit.jupiter.api.Test;

/**
 * Our exp (see {@link SimdKernels#exp(FloatVector)}): within 2 ulp of the double-precision exp wherever
 * the result is a normal float, +inf above 88.377 and 0 below -87.7, and the vector and scalar forms
 * bit-identical (the scalar form computes loop tails, so a row's result must not depend on where the tail
 * starts).
 */
class SimdExpTest {
    @Test
    void accurateAndIdenticalInVectorAndScalarForm() {
        SplittableRandom rng = new SplittableRandom(3);
        int lanes = FloatVector.SPECIES_PREFERRED.length();
        float[] x = new float[lanes];
        double worstUlps = 0;
        for (int trial = 0; trial < 20000; trial++) {
            for (int i = 0; i < lanes; i++) {
                x[i] = (float) (rng.nextDouble() * 180 - 90); // beyond both saturation points
            }
            if (trial == 0) {
                x[0] = 0f;
                x[1 % lanes] = -0f;
                x[2 % lanes] = 88.37f;
                x[3 % lanes] = -87.6f;
            }
            float[] y = SimdKernels.exp(FloatVector.fromArray(FloatVector.SPECIES_PREFERRED, x, 0)).toArray();
            for (int i = 0; i < lanes; i++) {
                float scalar = SimdKernels.exp(x[i]);
                assertEquals(Float.floatToRawIntBits(scalar), Float.floatToRawIntBits(y[i]), "vector and scalar exp(" + x[i] + ")");
                double ref = Math.exp(x[i]);
                if (x[i] > 88.377f) {
                    assertEquals(Float.POSITIVE_INFINITY, y[i], "exp(" + x[i] + ") overflows");
                } else if (x[i] < -87.7f) {
                    assertEquals(0f, y[i], "exp(" + x[i] + ") flushes to 0");
                } else if (x[i] >= -87.33f && x[i] <= 88.37f) { // normal results (the bands between: bits checked above)
                    assertTrue(y[i] < Float.POSITIVE_INFINITY, "exp(" + x[i] + ") is finite");
                    worstUlps = Math.max(worstUlps, Math.abs(y[i] - ref) / Math.ulp((float) ref));
                }
            }
        }
        assertTrue(worstUlps <= 2, "worst error " + worstUlps + " ulp");
        assertTrue(Float.isNaN(SimdKernels.exp(Float.NaN)));
    }

    /**
     * The special inputs, vector and scalar alike: NaN of either sign gives NaN (the clamp works on the bits and
     * would otherwise map it to a number), infinities and huge values saturate, -0 gives 1.
     */
    @Test
    void specialValues() {
        float negativeNaN = Float.intBitsToFloat(0xffc00000); // the NaN x86 arithmetic produces
        float[] in = {Float.NaN, negativeNaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, 1e30f, -1e30f, -0f, 89.5f,
                -88.5f, Float.intBitsToFloat(0x7f800001)};
        float[] want = {Float.NaN, Float.NaN, Float.POSITIVE_INFINITY, 0f, Float.POSITIVE_INFINITY, 0f, 1f,
                Float.POSITIVE_INFINITY, 0f, Float.NaN};
        int lanes = FloatVector.SPECIES_PREFERRED.length();
        for (int i = 0; i < in.length; i++) {
            float[] x = new float[lanes];
            java.util.Arrays.fill(x, in[i]);
            float vector = SimdKernels.exp(FloatVector.fromArray(FloatVector.SPECIES_PREFERRED, x, 0)).toArray()[lanes - 1];
            float scalar = SimdKernels.exp(in[i]);
            assertEquals(want[i], vector, "vector exp(" + in[i] + ")");
            assertEquals(want[i], scalar, "scalar exp(" + in[i] + ")");
        }
    }

    /**
     * The cheaper forms give exp's exact bits on their domains: {@link SimdKernels#expNonPositive} below 88.7
     * (NaN, -inf and the underflow band included), {@link SimdKernels#expClamped} inside exp's clamp range.
     */
    @Test
    void cheaperFormsAgreeWithExpOnTheirDomains() {
        SplittableRandom rng = new SplittableRandom(5);
        int lanes = FloatVector.SPECIES_PREFERRED.length();
        float[] x = new float[lanes];
        float[] special = {Float.NaN, Float.NEGATIVE_INFINITY, -1e30f, -88.5f, -0f, 0f, 88.7f};
        for (int trial = 0; trial < 20000; trial++) {
            for (int i = 0; i < lanes; i++) {
                x[i] = trial < special.length ? special[trial] : (float) (rng.nextDouble() * 178 - 89.3);
            }
            FloatVector v = FloatVector.fromArray(FloatVector.SPECIES_PREFERRED, x, 0);
            float[] full = SimdKernels.exp(v).toArray();
            float[] nonPositive = SimdKernels.expNonPositive(v).toArray();
            float[] clamped = SimdKernels.expClamped(v).toArray();
            for (int i = 0; i < lanes; i++) {
                assertEquals(Float.floatToRawIntBits(full[i]), Float.floatToRawIntBits(nonPositive[i]),
                        "expNonPositive(" + x[i] + ")");
                if (x[i] >= -87.68f && x[i] <= 88.37f) {
                    assertEquals(Float.floatToRawIntBits(full[i]), Float.floatToRawIntBits(clamped[i]),
                            "expClamped(" + x[i] + ")");
                }
            }
        }
    }
}
