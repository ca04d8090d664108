package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * The loops that dominate a CPU step after the GEMMs (softmax and cross-entropy exponentials, GELU,
 * AdamW, norms of the gradient), written with the Vector API ({@code jdk.incubator.vector}) over direct
 * buffers.
 *
 * <p>Determinism: results must not depend on whether the JIT has compiled a loop yet (a resumed run must
 * reproduce an uninterrupted one bit for bit). The Vector API's {@code EXP} lane is an SVML intrinsic once
 * compiled but {@link Math#exp} lane by lane before that, and its floating-point {@code reduceLanes(ADD)}
 * order is unspecified: both gave last-bit differences between runs. So {@link #exp} is our own
 * (Cody-Waite reduction and Cephes' polynomial: only IEEE +, *, fma and bit operations, the same in every tier,
 * within 2 ulp of exp), and lane sums are added in a fixed order ({@link #sumLanes}). It is also fast:
 * about as fast as the intrinsic, 20x {@code Math.exp}. tanh comes from exp too (JDK 17's vector
 * {@code TANH} is no intrinsic).
 *
 * <p>Writing a loop here (JDK 17's C2, measured; docs/benchmarks.md, issue 23 third part): use the preferred
 * species only (one loop of another shape in the JVM made the others 2x slower); keep a loop body's Vector API
 * calls few, broadcasting constants before the loop, because C2 stops inlining after about 18,000 IR nodes and
 * a call left out of line boxes its vectors every iteration; check a new loop with
 * {@code -XX:+UnlockDiagnosticVMOptions -XX:+PrintInlining} (no {@code NodeCountInliningCutoff} or
 * {@code failed to inline (intrinsic)} inside it) in the plain bench as well as the profile.
 *
 * <p>Only {@link CpuKernels} touches this class, and only when {@link CpuKernels#vectorModulePresent()} says the module is in
 * the JVM (it needs {@code --add-modules=jdk.incubator.vector}); otherwise the scalar loops run. Offsets
 * and counts are in float elements. Stateless and thread-safe.
 */
final class SimdKernels {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    private static final float GELU_SCALE = (float) Math.sqrt(2.0 / Math.PI);

    private SimdKernels() {
    }

    private static final float LOG2E = 1.44269504088896341f;
    private static final float LN2_HI = 0.693359375f;
    private static final float LN2_LO = -2.12194440e-4f;
    private static final float ROUNDER = 12582912f; // 1.5 * 2^23: adding it rounds to an integer
    private static final int ROUNDER_BITS = Float.floatToRawIntBits(ROUNDER);
    // Clamping the input here makes 2^n saturate through its exponent bits alone: n = 128 gives the bits of
    // +inf (x above ~88.376), n = -127 gives 0 (x below ~-87.68; subnormal results flush to 0). No lane
    // masks: JDK 17's compare/blend on these shapes are not intrinsics and cost 4x the whole exp.
    private static final float EXP_MAX = 89f;
    private static final float EXP_MIN = -88f;

    /**
     * e^x lane by lane: x = n ln2 + r with |r| <= ln2/2 (n by round-to-nearest), e^r by Cephes' degree-6
     * polynomial in fused multiply-adds, 2^n through the exponent bits. Inputs above about 88.376 give +inf,
     * below about -87.68 give 0, NaN gives NaN.
     */
    static FloatVector exp(FloatVector x) {
        return expClamped(x.min(EXP_MAX).max(EXP_MIN));
    }

    /**
     * {@link #exp(FloatVector)} for inputs below 88.7, the same bits there: without the upper clamp (a float min
     * costs JDK 17 a blend for Java's NaN and -0 rules, about 1.3 ns of the 7.7 a vector). For a value minus its
     * row's maximum or log-sum-exp (softmax, cross-entropy), which is at most 0.
     */
    static FloatVector expNonPositive(FloatVector x) {
        return expClamped(x.max(EXP_MIN));
    }

    /**
     * exp of inputs already within [-87.68, 88.37] (or clamped by the caller into it): no clamp at all. Outside
     * that range the result is garbage.
     */
    static FloatVector expClamped(FloatVector xc) {
        FloatVector t = xc.fma(LOG2E, ROUNDER); // n + 1.5 * 2^23: n sits in the low mantissa bits
        FloatVector n = t.sub(ROUNDER);
        FloatVector r = n.fma(FloatVector.broadcast(S, -LN2_HI), xc); // exact: n * LN2_HI has at most 17 bits
        r = n.fma(FloatVector.broadcast(S, -LN2_LO), r);
        FloatVector p = r.fma(1.9875691500e-4f, 1.3981999507e-3f);
        p = p.fma(r, FloatVector.broadcast(S, 8.3334519073e-3f));
        p = p.fma(r, FloatVector.broadcast(S, 4.1665795894e-2f));
        p = p.fma(r, FloatVector.broadcast(S, 1.6666665459e-1f));
        p = p.fma(r, FloatVector.broadcast(S, 5.0000001201e-1f));
        FloatVector er = p.mul(r).fma(r, r).add(1f); // 1 + r + r^2 p(r)
        // 2^n: (n + 127) << 23 as float bits, with n = bits(t) - bits(ROUNDER)
        IntVector bits = ((IntVector) t.viewAsIntegralLanes()).sub(ROUNDER_BITS - 127).lanewise(VectorOperators.LSHL, 23);
        return er.mul(bits.viewAsFloatingLanes());
    }

    /** The same computation as {@link #exp(FloatVector)} for one value (loop tails), bit for bit. */
    static float exp(float x) {
        float xc = Math.max(Math.min(x, EXP_MAX), EXP_MIN);
        float t = Math.fma(xc, LOG2E, ROUNDER);
        float n = t - ROUNDER;
        float r = Math.fma(n, -LN2_HI, xc);
        r = Math.fma(n, -LN2_LO, r);
        float p = Math.fma(r, 1.9875691500e-4f, 1.3981999507e-3f);
        p = Math.fma(p, r, 8.3334519073e-3f);
        p = Math.fma(p, r, 4.1665795894e-2f);
        p = Math.fma(p, r, 1.6666665459e-1f);
        p = Math.fma(p, r, 5.0000001201e-1f);
        float er = Math.fma(p * r, r, r) + 1f;
        return er * Float.intBitsToFloat((Float.floatToRawIntBits(t) - (ROUNDER_BITS - 127)) << 23);
    }

    /** The lanes of {@code v} added left to right in double: the same order compiled or not. */
    static double sumLanes(FloatVector v) {
        float[] lanes = v.toArray();
        double s = 0;
        for (float f : lanes) {
            s += f;
        }
        return s;
    }

    static FloatVector load(ByteBuffer b, int i) {
        return FloatVector.fromByteBuffer(S, b, 4 * i, NATIVE);
    }

    static float max(ByteBuffer b, int off, int n) {
        int i = 0;
        FloatVector acc = FloatVector.broadcast(S, Float.NEGATIVE_INFINITY);
        for (int upper = S.loopBound(n); i < upper; i += S.length()) {
            acc = acc.max(load(b, off + i));
        }
        float m = acc.reduceLanes(VectorOperators.MAX);
        for (; i < n; i++) {
            m = Math.max(m, b.getFloat(4 * (off + i)));
        }
        return m;
    }

    /**
     * The sum of {@code exp(x - shift)} (per-lane fp32, then double); with {@code store} the exponentials
     * replace {@code x} in place. {@code shift} is the row's maximum (so {@link #expNonPositive} applies).
     */
    static double expShiftSum(ByteBuffer b, int off, int n, float shift, boolean store) {
        int i = 0;
        double sum = 0;
        FloatVector acc = FloatVector.zero(S);
        for (int upper = S.loopBound(n); i < upper; i += S.length()) {
            FloatVector e = expNonPositive(load(b, off + i).sub(shift));
            if (store) {
                e.intoByteBuffer(b, 4 * (off + i), NATIVE);
            }
            acc = acc.add(e);
        }
        sum += sumLanes(acc);
        for (; i < n; i++) {
            float e = exp(b.getFloat(4 * (off + i)) - shift);
            if (store) {
                b.putFloat(4 * (off + i), e);
            }
            sum += e;
        }
        return sum;
    }

    /**
     * {@code x = exp(x - shift)} in place, no sum (recomputing probabilities from a saved log-sum-exp, which is
     * at least the row's maximum: {@link #expNonPositive} applies).
     */
    static void expShift(ByteBuffer b, int off, int n, float shift) {
        int i = 0;
        for (int upper = S.loopBound(n); i < upper; i += S.length()) {
            expNonPositive(load(b, off + i).sub(shift)).intoByteBuffer(b, 4 * (off + i), NATIVE);
        }
        for (; i < n; i++) {
            b.putFloat(4 * (off + i), exp(b.getFloat(4 * (off + i)) - shift));
        }
    }

    static void scale(ByteBuffer b, int off, int n, float s) {
        int i = 0;
        for (int upper = S.loopBound(n); i < upper; i += S.length()) {
            load(b, off + i).mul(s).intoByteBuffer(b, 4 * (off + i), NATIVE);
        }
        for (; i < n; i++) {
            b.putFloat(4 * (off + i), b.getFloat(4 * (off + i)) * s);
        }
    }

    /** {@code out[i] = a[i] + b[i]} for elements [from, to) (the scalar tail adds alike: same bits). */
    static void add(ByteBuffer out, ByteBuffer a, ByteBuffer b, int from, int to) {
        int i = from;
        for (int upper = from + S.loopBound(to - from); i < upper; i += S.length()) {
            load(a, i).add(load(b, i)).intoByteBuffer(out, 4 * i, NATIVE);
        }
        for (; i < to; i++) {
            out.putFloat(4 * i, a.getFloat(4 * i) + b.getFloat(4 * i));
        }
    }

    /** {@code out[off + j] += bias[j]} for j in [0, n) (a bias added to one row; the scalar tail alike: same bits). */
    static void addToRow(ByteBuffer out, int off, ByteBuffer bias, int n) {
        int j = 0;
        for (int upper = S.loopBound(n); j < upper; j += S.length()) {
            load(out, off + j).add(load(bias, j)).intoByteBuffer(out, 4 * (off + j), NATIVE);
        }
        for (; j < n; j++) {
            out.putFloat(4 * (off + j), out.getFloat(4 * (off + j)) + bias.getFloat(4 * j));
        }
    }

    /** Softmax backward on one row: {@code dp = p * (dp - d)}. */
    static void softmaxGrad(ByteBuffer p, ByteBuffer dp, int off, int n, float d) {
        int i = 0;
        for (int upper = S.loopBound(n); i < upper; i += S.length()) {
            load(p, off + i).mul(load(dp, off + i).sub(d)).intoByteBuffer(dp, 4 * (off + i), NATIVE);
        }
        for (; i < n; i++) {
            int at = 4 * (off + i);
            dp.putFloat(at, p.getFloat(at) * (dp.getFloat(at) - d));
        }
    }

    static double dot(ByteBuffer a, int aOff, ByteBuffer b, int bOff, int n) {
        int i = 0;
        FloatVector acc = FloatVector.zero(S);
        for (int upper = S.loopBound(n); i < upper; i += S.length()) {
            acc = load(a, aOff + i).fma(load(b, bOff + i), acc);
        }
        double s = sumLanes(acc);
        for (; i < n; i++) {
            s += a.getFloat(4 * (aOff + i)) * b.getFloat(4 * (bOff + i));
        }
        return s;
    }

    /**
     * sigmoid(2u) = (1 + tanh u) / 2, from one exp: never NaN (exp overflow gives 0, underflow 1), and
     * without the cancellation {@code 1 + tanh u} suffers in the far negative tail.
     */
    private static FloatVector sigmoid2(FloatVector u) {
        return FloatVector.broadcast(S, 1f).div(exp(u.mul(-2f)).add(1f));
    }

    /** GELU (tanh form) of elements [from, to); {@code from} a multiple of the vector length. */
    static void geluForward(ByteBuffer out, ByteBuffer x, int from, int to) {
        int i = from;
        for (int upper = from + S.loopBound(to - from); i < upper; i += S.length()) {
            FloatVector v = load(x, i);
            FloatVector u = v.mul(v).mul(v).mul(0.044715f).add(v).mul(GELU_SCALE);
            v.mul(sigmoid2(u)).intoByteBuffer(out, 4 * i, NATIVE); // 0.5 v (1 + tanh u)
        }
        for (; i < to; i++) {
            float v = x.getFloat(4 * i);
            float u = GELU_SCALE * (v + 0.044715f * v * v * v);
            out.putFloat(4 * i, 0.5f * v * (1f + (float) Math.tanh(u)));
        }
    }

    /** GELU's backward on elements [from, to); {@code from} a multiple of the vector length. */
    static void geluBackward(ByteBuffer dx, ByteBuffer dout, ByteBuffer x, int from, int to) {
        // The constants are broadcast once, before the loop: each broadcast in the loop body is a Vector API call
        // that C2 expands into many IR nodes, and past about 18,000 nodes (NodeCountInliningCutoff) it stops
        // inlining; a Vector API call left out-of-line boxes its vectors, an allocation per iteration. The body
        // with the exp came close enough that the dout load was left out (26 ns per vector instead of 17).
        FloatVector one = FloatVector.broadcast(S, 1f);
        FloatVector two = FloatVector.broadcast(S, 2f);
        FloatVector minusTwo = FloatVector.broadcast(S, -2f);
        FloatVector cubic = FloatVector.broadcast(S, 0.044715f);
        FloatVector cubic3 = FloatVector.broadcast(S, 3f * 0.044715f);
        FloatVector scale = FloatVector.broadcast(S, GELU_SCALE);
        FloatVector uMin = FloatVector.broadcast(S, -40f);
        FloatVector uMax = FloatVector.broadcast(S, 40f);
        int i = from;
        for (int upper = from + S.loopBound(to - from); i < upper; i += S.length()) {
            FloatVector v = load(x, i);
            FloatVector d = load(dout, i);
            FloatVector v2 = v.mul(v);
            FloatVector u = v2.mul(v).mul(cubic).add(v).mul(scale);
            // with sp = sigmoid(2u), sm = sigmoid(-2u): 0.5 (1 + tanh u) = sp, sech^2 u = 4 sp sm; both from one
            // exp e = exp(-2u): sp = 1 / (1 + e), sm = e sp (no cancellation). u is clamped to [-40, 40] first, so e
            // stays finite (sm would be inf * 0 otherwise); beyond it tanh u is +-1 in float and sp, sm are 0 or 1
            // to within 2e-35.
            FloatVector e = expClamped(u.max(uMin).min(uMax).mul(minusTwo));
            FloatVector sp = one.div(e.add(one));
            FloatVector sm = e.mul(sp);
            FloatVector grad = sp.add(v.mul(two).mul(sp).mul(sm).mul(v2.mul(cubic3).add(one).mul(scale)));
            grad.mul(d).intoByteBuffer(dx, 4 * i, NATIVE);
        }
        for (; i < to; i++) {
            float v = x.getFloat(4 * i);
            float th = (float) Math.tanh(GELU_SCALE * (v + 0.044715f * v * v * v));
            float grad = 0.5f * (1f + th) + 0.5f * v * (1f - th * th) * GELU_SCALE * (1f + 3f * 0.044715f * v * v);
            dx.putFloat(4 * i, grad * dout.getFloat(4 * i));
        }
    }

    /** One AdamW update of elements [from, to); see {@link CpuKernels#adamw}. */
    static void adamw(ByteBuffer p, ByteBuffer g, ByteBuffer m, ByteBuffer v, int from, int to, float gradScale,
                      float beta1, float beta2, float eps, float decay, float stepSize, float invSqrtBc2) {
        boolean rescale = gradScale != 1f;
        int i = from;
        for (int upper = from + S.loopBound(to - from); i < upper; i += S.length()) {
            FloatVector gi = load(g, i);
            if (rescale) { // the clipped gradient, as scale() would have left it
                gi = gi.mul(gradScale);
                gi.intoByteBuffer(g, 4 * i, NATIVE);
            }
            FloatVector mi = load(m, i).mul(beta1).add(gi.mul(1 - beta1));
            FloatVector vi = load(v, i).mul(beta2).add(gi.mul(gi).mul(1 - beta2));
            mi.intoByteBuffer(m, 4 * i, NATIVE);
            vi.intoByteBuffer(v, 4 * i, NATIVE);
            FloatVector denom = vi.lanewise(VectorOperators.SQRT).mul(invSqrtBc2).add(eps);
            load(p, i).mul(decay).sub(mi.mul(stepSize).div(denom)).intoByteBuffer(p, 4 * i, NATIVE);
        }
        for (; i < to; i++) {
            CpuFlatKernels.adamwScalar(p, g, m, v, i, gradScale, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
        }
    }

    /**
     * Elements per partial sum of a sum of squares: per-vector fp32 partial sums are flushed into double this often
     * to bound rounding error (chunks from {@link #sumOfSquaresChunk}, added in chunk order, then the tail by
     * {@link #addSquares}; CpuKernels computes the chunks on several threads).
     */
    static final int SQUARES_CHUNK = 4096;

    /** Where the vector loop over {@code n} elements ends and the scalar tail begins. */
    static int vectorBound(int n) {
        return S.loopBound(n);
    }

    /** One chunk's sum of squares, [from, to) a whole number of vectors. */
    static double sumOfSquaresChunk(ByteBuffer b, int from, int to) {
        FloatVector acc = FloatVector.zero(S);
        for (int i = from; i < to; i += S.length()) {
            FloatVector x = load(b, i);
            acc = x.fma(x, acc);
        }
        return sumLanes(acc);
    }

    /** {@code total} plus the squares of [from, n), each added in order in double (the scalar tail). */
    static double addSquares(ByteBuffer b, int from, int n, double total) {
        for (int i = from; i < n; i++) {
            double x = b.getFloat(4 * i);
            total += x * x;
        }
        return total;
    }
}
