package org.sparkatron.parallel;

import org.sparkatron.device.Kernels;
import org.sparkatron.tensor.Tensor;

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

    /** @param p drop probability in [0, 1) */
    public DropoutRng(float p, long seed) {
        if (!(p >= 0f && p < 1f)) {
            throw new IllegalArgumentException("dropout probability must be in [0, 1), got " + p);
        }
        this.p = p;
        this.seed = seed;
    }

    public float probability() {
        return p;
    }

    static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** The stream key of (step, site): the {@code base} argument of {@link Kernels#dropout}. */
    public long base(long step, int site) {
        return mix(seed ^ mix(step * GOLDEN + site));
    }

    /** Whether element {@code index} (global, row-major) of stream (step, site) is kept. */
    public boolean keep(long step, int site, long index) {
        return keep(base(step, site), index, p);
    }

    /**
     * The mask every device computes: element {@code index} of the stream keyed {@code base} is kept when
     * the top 24 bits of {@code mix(base + index * GOLDEN)}, as a fraction in [0, 1), are at least {@code p}.
     */
    public static boolean keep(long base, long index, float p) {
        long h = mix(base + index * GOLDEN);
        return (h >>> 40) * 0x1.0p-24f >= p;
    }

    /**
     * In place, as a kernel: {@code x[i, j] *= keep ? 1/(1-p) : 0} for the {@code rows} rows of a block whose
     * first row is global row {@code firstRow} of a [*, cols] tensor. The backward is the same call on the
     * gradient.
     */
    public void apply(Kernels k, Tensor x, long step, int site, long firstRow, int rows, int cols) {
        if (p != 0f) {
            k.dropout(x, p, base(step, site), firstRow, rows, cols);
        }
    }
}
