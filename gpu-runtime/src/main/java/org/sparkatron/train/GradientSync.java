package org.sparkatron.train;

import org.sparkatron.tensor.Tensor;

/**
 * What the training loop asks of the ranks it trains with, between backward and the optimizer step.
 * One rank alone needs nothing ({@link #NONE}); data parallelism averages gradients and losses across
 * replicas. Called on the training thread; implementations may block on communication and throw if a
 * peer fails.
 */
public interface GradientSync {
    /** Reduces the flat gradient block in place (for data parallelism: the mean over replicas). */
    void syncGradients(Tensor grads);

    /** The mean of a per-rank scalar over the ranks whose batches make up the global batch (the loss). */
    double averageScalar(double value);

    /** A rank training alone. */
    GradientSync NONE = new GradientSync() {
        @Override
        public void syncGradients(Tensor grads) {
        }

        @Override
        public double averageScalar(double value) {
            return value;
        }
    };
}
