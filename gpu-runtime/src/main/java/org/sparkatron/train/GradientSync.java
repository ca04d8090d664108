package org.sparkatron.train;

import org.sparkatron.tensor.Tensor;

/**
 * What the training loop asks of the ranks it trains with, between backward and the optimizer step.
 * One rank alone needs nothing ({@link #NONE}); data parallelism averages gradients and the step's
 * scalars (the loss) across replicas. Both calls take device tensors and issue communicator operations,
 * ordered with the rank's kernels: neither reads device memory on the host. Called on the training
 * thread; implementations may block on communication and throw if a peer fails.
 */
public interface GradientSync {
    /** Reduces the flat gradient block in place (for data parallelism: the mean over replicas). */
    void syncGradients(Tensor grads);

    /**
     * In place, the mean over the ranks whose batches make up the global batch of per-rank F64 device
     * scalars (the loss).
     */
    void averageScalars(Tensor scalars);

    /**
     * In place, the element-wise maximum over the replicas of an F32 device tensor: the FP8 amaxes of delayed
     * scaling, reduced over data parallelism as Megatron does. Nothing for a rank alone.
     */
    default void maxOverReplicas(Tensor amaxes) {
    }

    /** A rank training alone. */
    GradientSync NONE = new GradientSync() {
        @Override
        public void syncGradients(Tensor grads) {
        }

        @Override
        public void averageScalars(Tensor scalars) {
        }
    };
}
