package org.sparkatron.device.cpu;

import static org.sparkatron.device.cpu.SimdKernels.load;
import static org.sparkatron.device.cpu.SimdKernels.sumLanes;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * The row and column loops of the CPU norms and of the bias gradient, in the Vector API (see
 * {@link SimdKernels} for why it sits in its own class: only touched when the module is present).
 *
 * <p>Row statistics (a row's sum, sum of squares, dot products) add vectors of float lanes and then the lanes
 * in double, in a fixed order, plus the tail in double: the same bits every time, on any thread. Column sums
 * (weight and bias gradients) keep one double per column added over the rows in row order, exactly as the
 * scalar loops do, so they give the scalar loops' bits.
 *
 * <p>Offsets and counts are in float elements. Stateless and thread-safe.
 */
final class SimdNorms {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    // The double species of the same width: a float vector widens into two of them (parts 0 and 1).
    private static final VectorSpecies<Double> D = DoubleVector.SPECIES_PREFERRED;
    private static final int L = S.length();
    private static final ByteOrder NATIVE = ByteOrder.nativeOrder();
    /** Columns a column-sum block holds in registers: two float vectors' worth, as four double vectors. */
    // Every float vector here is of the preferred species, as in SimdKernels: mixing shapes made C2 compile
    // the shared Vector API methods worse for every caller (measured: LayerNorm's forward 2x slower once a
    // 128-bit loop ran in the same JVM).
    private static final int BLOCK = 2 * L;

    static {
        if (D.length() * 2 != L) { // equal widths on every Vector API platform; checked, not assumed
            throw new ExceptionInInitializerError("float species of " + L + " lanes, double of " + D.length());
        }
    }

    private SimdNorms() {
    }


    /** Half {@code part} (0 or 1) of a float vector's lanes, widened to double. */
    private static DoubleVector wide(FloatVector v, int part) {
        return (DoubleVector) v.convertShape(VectorOperators.F2D, D, part);
    }


    /**
     * LayerNorm of one row of {@code c} elements at {@code base}: writes the normalized, scaled and shifted
     * row to {@code out} and returns {@code {mean, rstd}} in {@code stats}.
     */
    static void layerNormRow(ByteBuffer out, ByteBuffer x, ByteBuffer w, ByteBuffer b, int base, int c, float eps,
                             float[] stats) {
        int upper = S.loopBound(c);
        FloatVector acc = FloatVector.zero(S);
        int j = 0;
        for (; j < upper; j += S.length()) {
            acc = acc.add(load(x, base + j));
        }
        double sum = sumLanes(acc);
        for (; j < c; j++) {
            sum += x.getFloat(4 * (base + j));
        }
        float m = (float) (sum / c);
        acc = FloatVector.zero(S);
        for (j = 0; j < upper; j += S.length()) {
            FloatVector d = load(x, base + j).sub(m);
            acc = d.fma(d, acc);
        }
        double var = sumLanes(acc);
        for (; j < c; j++) {
            float d = x.getFloat(4 * (base + j)) - m;
            var += d * d;
        }
        float s = (float) (1.0 / Math.sqrt(var / c + eps));
        for (j = 0; j < upper; j += S.length()) {
            load(x, base + j).sub(m).mul(s).mul(load(w, j)).add(load(b, j)).intoByteBuffer(out, 4 * (base + j), NATIVE);
        }
        for (; j < c; j++) {
            out.putFloat(4 * (base + j), (x.getFloat(4 * (base + j)) - m) * s * w.getFloat(4 * j) + b.getFloat(4 * j));
        }
        stats[0] = m;
        stats[1] = s;
    }

    /**
     * LayerNorm's input gradient for one row, added to {@code dx}:
     * {@code dx += s * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat))} with {@code dnorm = dout * w},
     * {@code xhat = (x - m) * s}.
     */
    static void layerNormRowBackward(ByteBuffer dx, ByteBuffer dout, ByteBuffer x, ByteBuffer w, int base, int c,
                                     float m, float s) {
        int upper = S.loopBound(c);
        FloatVector accN = FloatVector.zero(S);
        FloatVector accNx = FloatVector.zero(S);
        int j = 0;
        for (; j < upper; j += S.length()) {
            FloatVector xhat = load(x, base + j).sub(m).mul(s);
            FloatVector dnorm = load(dout, base + j).mul(load(w, j));
            accN = accN.add(dnorm);
            accNx = dnorm.fma(xhat, accNx);
        }
        double dnormSum = sumLanes(accN);
        double dnormXhatSum = sumLanes(accNx);
        for (; j < c; j++) {
            float xhat = (x.getFloat(4 * (base + j)) - m) * s;
            float dnorm = dout.getFloat(4 * (base + j)) * w.getFloat(4 * j);
            dnormSum += dnorm;
            dnormXhatSum += dnorm * xhat;
        }
        float a = (float) (dnormSum / c);
        float bc = (float) (dnormXhatSum / c);
        for (j = 0; j < upper; j += S.length()) {
            FloatVector xhat = load(x, base + j).sub(m).mul(s);
            FloatVector dnorm = load(dout, base + j).mul(load(w, j));
            load(dx, base + j).add(dnorm.sub(a).sub(xhat.mul(bc)).mul(s)).intoByteBuffer(dx, 4 * (base + j), NATIVE);
        }
        for (; j < c; j++) {
            float xhat = (x.getFloat(4 * (base + j)) - m) * s;
            float dnorm = dout.getFloat(4 * (base + j)) * w.getFloat(4 * j);
            dx.putFloat(4 * (base + j), dx.getFloat(4 * (base + j)) + (dnorm - a - xhat * bc) * s);
        }
    }

    /**
     * Column sums over rows {@code [0, n)} of a row-major {@code [n, ld]} matrix, columns {@code [j0, j1)}:
     * {@code acc[j - j0] += d[r, j]} in row order, in double (the scalar loop's bits).
     */
    static void columnSums(ByteBuffer d, int n, int ld, int j0, int j1, double[] acc) {
        int j = j0;
        for (; j + BLOCK <= j1; j += BLOCK) {
            int k = j - j0;
            DoubleVector a0 = DoubleVector.fromArray(D, acc, k);
            DoubleVector a1 = DoubleVector.fromArray(D, acc, k + L / 2);
            DoubleVector a2 = DoubleVector.fromArray(D, acc, k + L);
            DoubleVector a3 = DoubleVector.fromArray(D, acc, k + 3 * L / 2);
            for (int r = 0; r < n; r++) {
                FloatVector v0 = load(d, r * ld + j);
                FloatVector v1 = load(d, r * ld + j + L);
                a0 = a0.add(wide(v0, 0));
                a1 = a1.add(wide(v0, 1));
                a2 = a2.add(wide(v1, 0));
                a3 = a3.add(wide(v1, 1));
            }
            a0.intoArray(acc, k);
            a1.intoArray(acc, k + L / 2);
            a2.intoArray(acc, k + L);
            a3.intoArray(acc, k + 3 * L / 2);
        }
        for (int r = 0; r < n; r++) {
            for (int t = j; t < j1; t++) {
                acc[t - j0] += d.getFloat(4 * (r * ld + t));
            }
        }
    }

    /**
     * LayerNorm's weight and bias gradients over rows {@code [0, n)}, columns {@code [j0, j1)}:
     * {@code dw[j] += dout * xhat} and {@code db[j] += dout} summed in row order in double (the scalar loop's
     * bits), with {@code xhat = (x - mean[r]) * rstd[r]}.
     */
    static void layerNormColumns(ByteBuffer dout, ByteBuffer x, float[] mean, float[] rstd, int n, int c, int j0,
                                 int j1, double[] dwAcc, double[] dbAcc) {
        int j = j0;
        for (; j + L <= j1; j += L) {
            int k = j - j0;
            DoubleVector w0 = DoubleVector.fromArray(D, dwAcc, k);
            DoubleVector w1 = DoubleVector.fromArray(D, dwAcc, k + L / 2);
            DoubleVector b0 = DoubleVector.fromArray(D, dbAcc, k);
            DoubleVector b1 = DoubleVector.fromArray(D, dbAcc, k + L / 2);
            for (int r = 0; r < n; r++) {
                FloatVector d = load(dout, r * c + j);
                FloatVector p = load(x, r * c + j).sub(mean[r]).mul(rstd[r]).mul(d); // dout * xhat
                w0 = w0.add(wide(p, 0));
                w1 = w1.add(wide(p, 1));
                b0 = b0.add(wide(d, 0));
                b1 = b1.add(wide(d, 1));
            }
            w0.intoArray(dwAcc, k);
            w1.intoArray(dwAcc, k + L / 2);
            b0.intoArray(dbAcc, k);
            b1.intoArray(dbAcc, k + L / 2);
        }
        for (int r = 0; r < n; r++) {
            for (int t = j; t < j1; t++) {
                float xhat = (x.getFloat(4 * (r * c + t)) - mean[r]) * rstd[r];
                float d = dout.getFloat(4 * (r * c + t));
                dwAcc[t - j0] += d * xhat;
                dbAcc[t - j0] += d;
            }
        }
    }

    /** RMSNorm of one row: {@code out = x * s * w}, {@code s = (mean(x^2) + eps)^-1/2}; returns {@code s}. */
    static float rmsNormRow(ByteBuffer out, ByteBuffer x, ByteBuffer w, int base, int c, float eps) {
        int upper = S.loopBound(c);
        FloatVector acc = FloatVector.zero(S);
        int j = 0;
        for (; j < upper; j += L) {
            FloatVector v = load(x, base + j);
            acc = v.fma(v, acc);
        }
        double ss = sumLanes(acc);
        for (; j < c; j++) {
            float v = x.getFloat(4 * (base + j));
            ss += v * v;
        }
        float s = (float) (1.0 / Math.sqrt(ss / c + eps));
        for (j = 0; j < upper; j += L) {
            load(x, base + j).mul(s).mul(load(w, j)).intoByteBuffer(out, 4 * (base + j), NATIVE);
        }
        for (; j < c; j++) {
            out.putFloat(4 * (base + j), x.getFloat(4 * (base + j)) * s * w.getFloat(4 * j));
        }
        return s;
    }

    /** RMSNorm's input gradient for one row, added to {@code dx}: {@code dx += s * (dnorm - xhat * mean(dnorm * xhat))}. */
    static void rmsNormRowBackward(ByteBuffer dx, ByteBuffer dout, ByteBuffer x, ByteBuffer w, int base, int c, float s) {
        int upper = S.loopBound(c);
        FloatVector acc = FloatVector.zero(S);
        int j = 0;
        for (; j < upper; j += L) {
            acc = load(dout, base + j).mul(load(w, j)).fma(load(x, base + j).mul(s), acc);
        }
        double dot = sumLanes(acc);
        for (; j < c; j++) {
            dot += dout.getFloat(4 * (base + j)) * w.getFloat(4 * j) * (x.getFloat(4 * (base + j)) * s);
        }
        float k = (float) (dot / c);
        for (j = 0; j < upper; j += L) {
            FloatVector xhat = load(x, base + j).mul(s);
            FloatVector dnorm = load(dout, base + j).mul(load(w, j));
            load(dx, base + j).add(dnorm.sub(xhat.mul(k)).mul(s)).intoByteBuffer(dx, 4 * (base + j), NATIVE);
        }
        for (; j < c; j++) {
            float xhat = x.getFloat(4 * (base + j)) * s;
            float dnorm = dout.getFloat(4 * (base + j)) * w.getFloat(4 * j);
            dx.putFloat(4 * (base + j), dx.getFloat(4 * (base + j)) + (dnorm - xhat * k) * s);
        }
    }

    /**
     * RMSNorm's weight gradient over rows {@code [0, n)}, columns {@code [j0, j1)}: {@code dw[j] += dout * xhat}
     * in row order in double (the scalar loop's bits), {@code xhat = x * rstd[r]}.
     */
    static void rmsNormColumns(ByteBuffer dout, ByteBuffer x, float[] rstd, int n, int c, int j0, int j1, double[] dwAcc) {
        int j = j0;
        for (; j + L <= j1; j += L) {
            int k = j - j0;
            DoubleVector w0 = DoubleVector.fromArray(D, dwAcc, k);
            DoubleVector w1 = DoubleVector.fromArray(D, dwAcc, k + L / 2);
            for (int r = 0; r < n; r++) {
                FloatVector p = load(x, r * c + j).mul(rstd[r]).mul(load(dout, r * c + j)); // dout * xhat
                w0 = w0.add(wide(p, 0));
                w1 = w1.add(wide(p, 1));
            }
            w0.intoArray(dwAcc, k);
            w1.intoArray(dwAcc, k + L / 2);
        }
        for (int r = 0; r < n; r++) {
            for (int t = j; t < j1; t++) {
                dwAcc[t - j0] += dout.getFloat(4 * (r * c + t)) * (x.getFloat(4 * (r * c + t)) * rstd[r]);
            }
        }
    }
}
