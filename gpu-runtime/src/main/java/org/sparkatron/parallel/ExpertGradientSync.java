package org.sparkatron.parallel;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Kernels;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;

/**
 * Gradient reduction of a model with experts, as Megatron's expert grid does it: the dense region of the
 * gradient block goes through the dense data-parallel reduction ({@code dense}: the mean over the ep x dp
 * replicas), and the expert region ({@link ParameterSet#expertOffset()} on) is summed over the
 * expert-data-parallel group only (the ranks holding the same experts) and divided by the dense
 * data-parallel size. Each expert's gradient already holds the contributions of every EP rank's tokens (they
 * came back through the all-to-all), so this is the gradient of the mean loss over the global batch, exactly
 * what averaging over all replicas gives without expert parallelism. Device work only; on the training
 * thread; a failed peer surfaces as the communicator's exception.
 */
public final class ExpertGradientSync implements GradientSync {
    private final GradientSync dense;
    private final long expertOffset;
    private final long expertNumel;
    private final Communicator expertDp;
    private final int denseDpSize;
    private final Kernels kernels;

    /**
     * @param dense       the dense data-parallel reduction (over ep x dp ranks)
     * @param params      the model's parameters (where the expert region is)
     * @param expertDp    the expert-data-parallel group
     * @param denseDpSize the dense data-parallel size (ep x dp)
     * @param kernels     the rank's kernels (the division)
     */
    public ExpertGradientSync(GradientSync dense, ParameterSet params, Communicator expertDp, int denseDpSize, Kernels kernels) {
        this.dense = dense;
        this.expertOffset = params.expertOffset();
        this.expertNumel = params.expertNumel();
        this.expertDp = expertDp;
        this.denseDpSize = denseDpSize;
        this.kernels = kernels;
    }

    /**
     * The expert grid's reduction over data-parallel replicas {@code dp} (ep x dp ranks): the dense region
     * averaged over {@code dp} in all-reduces of at most {@code bucketBytes} (a few large messages, not one per
     * parameter), the experts over {@code expertDp}; the loss and the step's figures averaged over {@code dp}.
     */
    public static ExpertGradientSync overReplicas(Communicator dp, long bucketBytes, ParameterSet params, Communicator expertDp,
                                                  Kernels kernels) {
        int bucket = (int) Math.max(1, Math.min(Integer.MAX_VALUE / 4, bucketBytes / 4));
        GradientSync dense = new GradientSync() {
            @Override
            public void syncGradients(Tensor grads) {
                for (long at = 0; dp.size() > 1 && at < grads.numel(); at += bucket) {
                    dp.allReduce(grads.slice(at, (int) Math.min(bucket, grads.numel() - at)), ReduceOp.AVG);
                }
            }

            @Override
            public void averageScalars(Tensor scalars) {
                if (dp.size() > 1) {
                    dp.allReduce(scalars, ReduceOp.AVG);
                }
            }

            @Override
            public void sumScalars(Tensor scalars) {
                if (dp.size() > 1) {
                    dp.allReduce(scalars, ReduceOp.SUM);
                }
            }
        };
        return new ExpertGradientSync(dense, params, expertDp, dp.size(), kernels);
    }

    @Override
    public void syncGradients(Tensor grads) {
        if (expertOffset > 0) {
            dense.syncGradients(grads.slice(0, expertOffset));
        }
        if (expertNumel == 0) {
            return;
        }
        Tensor experts = grads.slice(expertOffset, expertNumel);
        if (expertDp.size() > 1) {
            expertDp.allReduce(experts, ReduceOp.SUM);
        }
        if (denseDpSize > 1) {
            kernels.scale(experts, 1f / denseDpSize);
        }
    }

    @Override
    public void averageScalars(Tensor scalars) {
        dense.averageScalars(scalars);
    }

    @Override
    public void sumScalars(Tensor scalars) {
        dense.sumScalars(scalars);
    }
}
