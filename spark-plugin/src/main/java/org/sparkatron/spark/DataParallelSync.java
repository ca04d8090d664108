package org.sparkatron.spark;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;

/**
 * Data-parallel gradient averaging: the flat gradient block is all-reduced (AVG) over the replicas in
 * buckets of {@code bucketBytes} (25 MB by default, as PyTorch DDP), so a model costs a few large
 * messages, not one per parameter. The loss is averaged the same way. Device tensors, ordered with the rank's
 * kernels; on the training thread; a failed peer surfaces as the communicator's exception.
 */
final class DataParallelSync implements GradientSync {
    private final Communicator dp;
    private final int bucketFloats;
    private long messages;

    DataParallelSync(Communicator dp, long bucketBytes) {
        this.dp = dp;
        this.bucketFloats = (int) Math.max(1, Math.min(Integer.MAX_VALUE / 4, bucketBytes / 4));
    }

    @Override
    public void syncGradients(Tensor grads) {
        if (dp.size() == 1) {
            return;
        }
        long n = grads.numel();
        for (long at = 0; at < n; at += bucketFloats) {
            dp.allReduce(grads.slice(at, (int) Math.min(bucketFloats, n - at)), ReduceOp.AVG);
            messages++;
        }
    }

    @Override
    public void averageScalars(Tensor scalars) {
        if (dp.size() > 1) {
            dp.allReduce(scalars, ReduceOp.AVG);
        }
    }

    /** All-reduce calls made for gradients so far (for tests: buckets, not parameters). */
    long gradientMessages() {
        return messages;
    }
}
