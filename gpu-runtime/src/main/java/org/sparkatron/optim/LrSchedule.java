package org.sparkatron.optim;

/**
 * Linear warm-up from 0 to {@code maxLr} over {@code warmupSteps}, then cosine decay to {@code minLr} at
 * {@code decaySteps}, then constant {@code minLr} (Megatron's and nanoGPT's schedule). Steps count from 0.
 */
public record LrSchedule(double maxLr, double minLr, long warmupSteps, long decaySteps) {

    public LrSchedule {
        if (!(maxLr >= 0) || !(minLr >= 0) || minLr > maxLr) {
            throw new IllegalArgumentException("learning rates must satisfy 0 <= min_lr <= lr, got lr=" + maxLr + " min_lr=" + minLr);
        }
        if (warmupSteps < 0 || decaySteps < warmupSteps) {
            throw new IllegalArgumentException("need 0 <= warmup steps (" + warmupSteps + ") <= decay steps (" + decaySteps + ")");
        }
    }

    /** A constant learning rate. */
    public static LrSchedule constant(double lr) {
        return new LrSchedule(lr, lr, 0, 0);
    }

    /** The learning rate for (0-based) step {@code step}. */
    public double at(long step) {
        if (step < warmupSteps) {
            return maxLr * (step + 1) / warmupSteps;
        }
        if (step >= decaySteps) {
            return minLr;
        }
        double progress = (double) (step - warmupSteps) / (decaySteps - warmupSteps);
        return minLr + 0.5 * (1 + Math.cos(Math.PI * progress)) * (maxLr - minLr);
    }
}
