package org.sparkatron.parallel;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * The row loops of the vocab-parallel cross-entropy (max, shifted exponentials and their sum, scaling)
 * with the Vector API when the JVM has the incubator module, plain loops otherwise; the Vector API classes
 * are touched only behind {@link #SIMD}. Offsets and counts are in floats. Stateless, thread-safe.
 */
final class VectorMath {
    static final boolean SIMD = ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()
            && !"false".equals(System.getProperty("sparkatron.simd"));

    private VectorMath() {
    }

    static float max(ByteBuffer b, int off, int n) {
        return SIMD ? Simd.max(b, off, n) : maxScalar(b, off, n, 0);
    }

    /** Sum of exp(x - shift) (fp32 lanes, double total); with {@code store} the exponentials replace x. */
    static double expShiftSum(ByteBuffer b, int off, int n, float shift, boolean store) {
        return SIMD ? Simd.expShiftSum(b, off, n, shift, store) : expScalar(b, off, n, 0, shift, store);
    }

    static void scale(ByteBuffer b, int off, int n, float s) {
        if (SIMD) {
            Simd.scale(b, off, n, s);
        } else {
            scaleScalar(b, off, n, 0, s);
        }
    }

    static float maxScalar(ByteBuffer b, int off, int n, int from) {
        float m = Float.NEGATIVE_INFINITY;
        for (int i = from; i < n; i++) {
            m = Math.max(m, b.getFloat(4 * (off + i)));
        }
        return m;
    }

    static double expScalar(ByteBuffer b, int off, int n, int from, float shift, boolean store) {
        double sum = 0;
        for (int i = from; i < n; i++) {
            float e = (float) Math.exp(b.getFloat(4 * (off + i)) - shift);
            if (store) {
                b.putFloat(4 * (off + i), e);
            }
            sum += e;
        }
        return sum;
    }

    static void scaleScalar(ByteBuffer b, int off, int n, int from, float s) {
        for (int i = from; i < n; i++) {
            b.putFloat(4 * (off + i), b.getFloat(4 * (off + i)) * s);
        }
    }

    /** Loaded only when SIMD is true. */
    private static final class Simd {
        private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
        private static final ByteOrder NATIVE = ByteOrder.nativeOrder();

        static float max(ByteBuffer b, int off, int n) {
            int i = 0;
            FloatVector acc = FloatVector.broadcast(S, Float.NEGATIVE_INFINITY);
            for (int upper = S.loopBound(n); i < upper; i += S.length()) {
                acc = acc.max(FloatVector.fromByteBuffer(S, b, 4 * (off + i), NATIVE));
            }
            return Math.max(acc.reduceLanes(VectorOperators.MAX), maxScalar(b, off, n, i));
        }

        static double expShiftSum(ByteBuffer b, int off, int n, float shift, boolean store) {
            int i = 0;
            FloatVector acc = FloatVector.zero(S);
            for (int upper = S.loopBound(n); i < upper; i += S.length()) {
                FloatVector e = FloatVector.fromByteBuffer(S, b, 4 * (off + i), NATIVE).sub(shift).lanewise(VectorOperators.EXP);
                if (store) {
                    e.intoByteBuffer(b, 4 * (off + i), NATIVE);
                }
                acc = acc.add(e);
            }
            return acc.reduceLanes(VectorOperators.ADD) + expScalar(b, off, n, i, shift, store);
        }

        static void scale(ByteBuffer b, int off, int n, float s) {
            int i = 0;
            for (int upper = S.loopBound(n); i < upper; i += S.length()) {
                FloatVector.fromByteBuffer(S, b, 4 * (off + i), NATIVE).mul(s).intoByteBuffer(b, 4 * (off + i), NATIVE);
            }
            scaleScalar(b, off, n, i, s);
        }
    }
}
