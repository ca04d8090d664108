package org.sparkatron.precision;

/**
 * Dynamic loss scaling for fp16 training, with the semantics of Megatron Core's
 * {@code DynamicGradScaler}: the loss (hence every gradient) is multiplied by {@link #scale()} before the
 * backward so small gradients survive fp16's narrow range; the optimizer unscales the gradients and
 * calls {@link #update} with whether any of them was infinite or NaN.
 *
 * <ul>
 *   <li>Overflow: the step must be skipped (no weight or optimizer-state change); the growth tracker
 *       resets and the hysteresis tracker drops by one; once it reaches zero, every overflow multiplies
 *       the scale by {@code backoffFactor}, never below {@code minScale}.</li>
 *   <li>No overflow: after {@code growthInterval} consecutive good steps the scale is multiplied by
 *       {@code growthFactor} and the hysteresis tracker is refilled. (As in Megatron, a good step alone
 *       does not refill it: only growth does.)</li>
 * </ul>
 * Not thread-safe: one per rank. Every rank of a job must feed it the same overflow flag (the training
 * loop derives it from the global gradient norm, which is identical on every rank), so scales agree.
 */
public final class DynamicGradScaler {
    /** The scaler's settings; {@link #defaults()} are what the CLI and Spark jobs use. */
    public record Config(double initialScale, double minScale, double growthFactor, double backoffFactor,
                         int growthInterval, int hysteresis) {
        public Config {
            if (!(minScale > 0) || !(initialScale >= minScale) || Double.isInfinite(initialScale)) {
                throw new IllegalArgumentException("loss scale needs 0 < min scale (" + minScale + ") <= initial scale ("
                        + initialScale + ") < infinity");
            }
            if (!(growthFactor > 1) || !(backoffFactor > 0 && backoffFactor < 1)) {
                throw new IllegalArgumentException("loss scale growth factor (" + growthFactor + ") must be > 1 and backoff ("
                        + backoffFactor + ") in (0, 1)");
            }
            if (growthInterval < 1 || hysteresis < 1) {
                throw new IllegalArgumentException("loss scale growth interval (" + growthInterval + ") and hysteresis ("
                        + hysteresis + ") must be >= 1");
            }
        }

        /**
         * Megatron's defaults (min scale 1, growth x2 every 1000 good steps, backoff x0.5, hysteresis 2) except
         * the initial scale: 2^16, PyTorch's GradScaler default, instead of Megatron's 2^32, which would spend
         * about 32 skipped steps backing off before a short run trains at all.
         */
        public static Config defaults() {
            return new Config(65536, 1, 2, 0.5, 1000, 2);
        }
    }

    private final Config cfg;
    private double scale;
    private int growthTracker;
    private int hysteresisTracker;

    public DynamicGradScaler(Config cfg) {
        this.cfg = cfg;
        this.scale = cfg.initialScale();
        this.hysteresisTracker = cfg.hysteresis();
    }

    public Config config() {
        return cfg;
    }

    /** The current loss scale. */
    public double scale() {
        return scale;
    }

    /** Consecutive good steps since the last overflow or growth. */
    public int growthTracker() {
        return growthTracker;
    }

    /** Overflows still tolerated before the scale backs off. */
    public int hysteresisTracker() {
        return hysteresisTracker;
    }

    /** True when the scale cannot back off any further. */
    public boolean atMinimum() {
        return scale <= cfg.minScale();
    }

    /** Restores saved state (resume). */
    public void restore(double scale, int growthTracker, int hysteresisTracker) {
        if (!(scale >= cfg.minScale()) || Double.isInfinite(scale) || growthTracker < 0) {
            throw new IllegalArgumentException("invalid loss scaler state: scale " + scale + ", growth tracker " + growthTracker);
        }
        this.scale = scale;
        this.growthTracker = growthTracker;
        this.hysteresisTracker = hysteresisTracker;
    }

    /** Advances the scaler after a step whose (unscaled) gradients did ({@code foundInf}) or did not overflow. */
    public void update(boolean foundInf) {
        if (foundInf) {
            growthTracker = 0;
            hysteresisTracker--;
            if (hysteresisTracker <= 0) {
                scale = Math.max(scale * cfg.backoffFactor(), cfg.minScale());
            }
        } else {
            growthTracker++;
            if (growthTracker == cfg.growthInterval()) {
                growthTracker = 0;
                hysteresisTracker = cfg.hysteresis();
                scale *= cfg.growthFactor();
            }
        }
    }

    @Override
    public String toString() {
        return "DynamicGradScaler(scale " + scale + ", growth " + growthTracker + "/" + cfg.growthInterval() + ", hysteresis "
                + hysteresisTracker + ")";
    }
}
