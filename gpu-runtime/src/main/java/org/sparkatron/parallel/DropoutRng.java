package org.sparkatron.parallel;

import java.nio.FloatBuffer;

/**
 * Dropout whose mask is a pure function of (seed, step, site, global element index): a counter-based
 * generator (SplitMix64 finaliser) instead of Megatron's per-rank generator states. This gives the two
 * properties tensor parallelism needs by construction: where activations are replicated over the TP group
 * every rank computes the same global indices and so the same mask; where they are split (sequence
 * parallelism, or per-rank heads) each rank's elements have different indices and so independent masks.
 * It also makes any TP layout drop exactly the elements a single rank drops (parity tests hold with
 * dropout on), and the backward regenerates the mask instead of storing it.
 *
 * <p>Immutable and thread-safe.
 */
public final class DropoutRng {
    private static final long GOLDEN = 0x9E3779B97F4A7C15L;
    private final float p;
    private final long seed;
    private final float scale;

    /** @param p drop probability in [0, 1) */
    public DropoutRng(float p, long seed) {
        if (!(p >= 0f && p < 1f)) {
            throw new IllegalArgumentException("dropout probability must be in [0, 1), got " + p);
        }
        this.p = p;
        this.seed = seed;
        this.scale = 1f / (1f - p);
    }

    public float probability() {
        return p;
    }

    static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    private long base(long step, int site) {
        return mix(seed ^ mix(step * GOLDEN + site));
    }

    /** Whether element {@code index} (global, row-major) of stream (step, site) is kept. */
    public boolean keep(long step, int site, long index) {
        return keep(base(step, site), index);
    }

    private boolean keep(long base, long index) {
        long h = mix(base + index * GOLDEN);
        return (h >>> 40) * 0x1.0p-24f >= p;
    }

    /**
     * In place: {@code x[i, j] *= keep ? 1/(1-p) : 0} for the {@code rows} rows of a block whose first row
     * is global row {@code firstRow} of a [*, cols] tensor. The backward is the same call on the gradient.
     */
    public void apply(org.sparkatron.tensor.Tensor x, long step, int site, long firstRow, int rows, int cols) {
        if (p == 0f) {
            return;
        }
        long b = base(step, site);
        FloatBuffer v = x.floats();
        for (int i = 0; i < rows; i++) {
            long row = (firstRow + i) * cols;
            for (int j = 0; j < cols; j++) {
                int at = i * cols + j;
                v.put(at, keep(b, row + j) ? v.get(at) * scale : 0f);
            }
        }
    }
}
