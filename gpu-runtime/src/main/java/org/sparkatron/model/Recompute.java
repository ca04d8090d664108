package org.sparkatron.model;

import java.util.Locale;

/**
 * Activation recomputation, chosen per model (Megatron's {@code --recompute-granularity}): what a layer keeps
 * from its forward for its backward, and what the backward computes again. Recomputed values are bitwise the
 * originals (the same kernels on the same inputs; dropout masks are counter-based), so recomputation never
 * changes a result, only memory and time.
 */
public enum Recompute {
    /** Keep everything the backward needs. */
    NONE,
    /**
     * Megatron's default selective mode: recompute the attention core. Our attention never stores the
     * {@code T x T} scores (flash attention's recipe), so what this frees is the attention output and its
     * log-sum-exp, recomputed from the kept q, k and v.
     */
    SELECTIVE,
    /** Keep only each layer's input; the backward runs the layer's forward again first. */
    FULL;

    /** Parses {@code none | selective | full} (case-insensitive), naming the choices otherwise. */
    public static Recompute parse(String s) {
        if (s != null) {
            for (Recompute r : values()) {
                if (r.name().equalsIgnoreCase(s.trim())) {
                    return r;
                }
            }
        }
        throw new IllegalArgumentException("recompute must be none, selective or full, got '" + s + "'");
    }

    public String label() {
        return name().toLowerCase(Locale.ROOT);
    }
}
