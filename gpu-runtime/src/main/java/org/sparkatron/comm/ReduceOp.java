package org.sparkatron.comm;

/**
 * Reduction applied element-wise by {@link Communicator#allReduce} and {@link Communicator#reduceScatter}.
 *
 * <p>{@code AVG} is a sum followed by one division by the group size on the final value (as NCCL's
 * {@code ncclAvg}); on integer types the division truncates toward zero. On BF16 and F16 every partial
 * result is computed in fp32 and rounded to nearest-even when stored.
 */
public enum ReduceOp {
    SUM, MAX, MIN, AVG
}
