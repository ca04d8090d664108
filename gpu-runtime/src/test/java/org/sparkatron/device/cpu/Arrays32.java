package org.sparkatron.device.cpu;

import static org.junit.jupiter.api.Assertions.fail;

import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.util.SplittableRandom;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/** Test helpers: host tensors from arrays, random data, and tolerance-checked comparison. */
public final class Arrays32 {
    private Arrays32() {
    }

    public static Tensor f32(double[] data, int... shape) {
        Tensor t = Tensor.allocateHost(DType.F32, shape);
        FloatBuffer b = t.floats();
        for (int i = 0; i < data.length; i++) {
            b.put(i, (float) data[i]);
        }
        return t;
    }

    public static Tensor i32(int[] data, int... shape) {
        Tensor t = Tensor.allocateHost(DType.I32, shape);
        IntBuffer b = t.ints();
        for (int i = 0; i < data.length; i++) {
            b.put(i, data[i]);
        }
        return t;
    }

    public static double[] read(Tensor t) {
        FloatBuffer b = t.floats();
        double[] out = new double[(int) t.numel()];
        for (int i = 0; i < out.length; i++) {
            out[i] = b.get(i);
        }
        return out;
    }

    /** Uniform values in [-scale, scale], rounded to float so the double reference sees the same inputs. */
    public static double[] random(SplittableRandom rng, int n, double scale) {
        double[] a = new double[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) ((rng.nextDouble() * 2 - 1) * scale);
        }
        return a;
    }

    public static double[] concat(double[] a, double[] b) {
        double[] r = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, r, a.length, b.length);
        return r;
    }

    /**
     * Asserts |actual - expected| <= atol + rtol * |expected| element-wise, naming the worst element; equal values
     * pass (so an expected infinity must be met by the same infinity).
     */
    public static void assertClose(String what, double[] expected, double[] actual, double atol, double rtol) {
        if (expected.length != actual.length) {
            fail(what + ": length " + actual.length + " != expected " + expected.length);
        }
        double worst = -1;
        int at = -1;
        for (int i = 0; i < expected.length; i++) {
            if (actual[i] == expected[i]) {
                continue;
            }
            double err = Math.abs(actual[i] - expected[i]) - (atol + rtol * Math.abs(expected[i]));
            if (!(err <= 0) && (Double.isNaN(err) || err > worst)) {
                worst = Double.isNaN(err) ? Double.POSITIVE_INFINITY : err;
                at = i;
            }
        }
        if (at >= 0) {
            fail(what + ": element " + at + " is " + actual[at] + ", expected " + expected[at]
                    + " (atol " + atol + ", rtol " + rtol + ")");
        }
    }
}
