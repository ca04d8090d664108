package org.sparkatron.comm;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * The fp32 reduction loop with the Vector API over direct buffers (the all-reduce hot path; about 5x the
 * scalar loop here). Only {@link Reductions} touches this class, and only when the module is in the JVM
 * ({@code --add-modules=jdk.incubator.vector}); otherwise the scalar loops run (the multi-process tests
 * launch their ranks without the module, so they exercise that path).
 * Offsets are in bytes. Stateless and thread-safe.
 */
final class SimdReductions {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();

    private SimdReductions() {
    }

    /** dst[i] = dst[i] op src[i] for n floats; op 0 = sum, 1 = max, 2 = min (Math.max/min NaN semantics). */
    static void accumulateF32(int op, ByteBuffer dst, int dstOff, ByteBuffer src, int srcOff, int n) {
        int i = 0;
        int step = S.length();
        for (int upper = S.loopBound(n); i < upper; i += step) {
            FloatVector a = FloatVector.fromByteBuffer(S, dst, dstOff + 4 * i, NATIVE);
            FloatVector b = FloatVector.fromByteBuffer(S, src, srcOff + 4 * i, NATIVE);
            FloatVector r = op == 0 ? a.add(b) : op == 1 ? a.max(b) : a.min(b);
            r.intoByteBuffer(dst, dstOff + 4 * i, NATIVE);
        }
        for (; i < n; i++) {
            float a = dst.getFloat(dstOff + 4 * i);
            float b = src.getFloat(srcOff + 4 * i);
            dst.putFloat(dstOff + 4 * i, op == 0 ? a + b : op == 1 ? Math.max(a, b) : Math.min(a, b));
        }
    }
}
