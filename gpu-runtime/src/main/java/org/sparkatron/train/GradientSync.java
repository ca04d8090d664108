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

    /**
     * In place, the element-wise sum over the ranks whose batches make up the global batch of F64 device scalars:
     * the step's per-expert token counts, which the aux-loss-free expert bias of MoE routers balances
     * ({@code moe_router_enable_expert_bias}). Implementations that do not support it refuse, naming themselves.
     */
    default void sumScalars(Tensor scalars) {
        throw new UnsupportedOperationException(getClass().getName() + " cannot sum scalars over its replicas, which "
                + "moe_router_enable_expert_bias needs");
    }

    /** A rank training alone. */
    GradientSync NONE = new GradientSync() {
        @Override
        public void syncGradients(Tensor grads) {
        }

        @Override
        public void averageScalars(Tensor scalars) {
        }

        @Override
        public void sumScalars(Tensor scalars) {
        }
    };
}
