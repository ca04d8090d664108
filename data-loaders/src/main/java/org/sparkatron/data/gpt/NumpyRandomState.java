package org.sparkatron.data.gpt;

/**
 * NumPy's legacy {@code numpy.random.RandomState(seed)} as far as Megatron's index building uses it:
 * MT19937 seeded with {@code init_genrand(seed)} (NumPy's {@code mt19937_seed} for an integer seed) and
 * {@code shuffle} of a 1-D array, which is Fisher-Yates from the last element down, drawing
 * {@code j} in {@code [0, i]} by masked rejection sampling on 32-bit outputs ({@code random_interval}).
 * The same seed gives the same permutation as NumPy, bit for bit (checked against NumPy by
 * {@code MegatronGoldenTest}).
 *
 * <p>Not thread-safe: one instance per index build, as Megatron uses one per dataset.
 */
public final class NumpyRandomState {
    private static final int N = 624;
    private static final int M = 397;
    private final int[] mt = new int[N];
    private int pos;

    public NumpyRandomState(long seed) {
        if (seed < 0 || seed > 0xFFFFFFFFL) {
            throw new IllegalArgumentException("seed must be in [0, 2^32 - 1], got " + seed);
        }
        int s = (int) seed;
        for (int i = 0; i < N; i++) {
            mt[i] = s;
            s = 1812433253 * (s ^ (s >>> 30)) + i + 1;
        }
        pos = N;
    }

    /** The next raw 32-bit output (MT19937 {@code genrand_int32}), as an unsigned value in a long. */
    public long nextUint32() {
        if (pos >= N) {
            regenerate();
        }
        int y = mt[pos++];
        y ^= y >>> 11;
        y ^= (y << 7) & 0x9d2c5680;
        y ^= (y << 15) & 0xefc60000;
        y ^= y >>> 18;
        return y & 0xFFFFFFFFL;
    }

    private void regenerate() {
        for (int k = 0; k < N; k++) {
            int y = (mt[k] & 0x80000000) | (mt[(k + 1) % N] & 0x7fffffff);
            int v = mt[(k + M) % N] ^ (y >>> 1);
            if ((y & 1) != 0) {
                v ^= 0x9908b0df;
            }
            mt[k] = v;
        }
        pos = 0;
    }

    /** A uniform integer in {@code [0, max]}: NumPy's {@code random_interval}. */
    public long interval(long max) {
        if (max == 0) {
            return 0;
        }
        long mask = max;
        mask |= mask >>> 1;
        mask |= mask >>> 2;
        mask |= mask >>> 4;
        mask |= mask >>> 8;
        mask |= mask >>> 16;
        mask |= mask >>> 32;
        long v;
        if (max <= 0xFFFFFFFFL) {
            while ((v = nextUint32() & mask) > max) {
                // rejected: draw again
            }
        } else {
            while ((v = ((nextUint32() << 32) | nextUint32()) & mask) > max) {
                // rejected: draw again
            }
        }
        return v;
    }

    /** Shuffles {@code a[from, to)} in place exactly as {@code RandomState.shuffle} shuffles that slice. */
    public void shuffle(int[] a, int from, int to) {
        for (int i = to - from - 1; i > 0; i--) {
            int j = (int) interval(i);
            int t = a[from + i];
            a[from + i] = a[from + j];
            a[from + j] = t;
        }
    }
}
