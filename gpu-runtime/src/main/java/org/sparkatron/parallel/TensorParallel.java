package org.sparkatron.parallel;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.SelfCommunicator;

/**
 * One rank's tensor-parallel context: its TP group (Megatron's {@code tensor_model_parallel_group}) and
 * whether sequence parallelism is on. Every layer of a model holds the same instance; a group of one
 * ({@link #none()}) makes every mapping the identity, so the single-rank model runs the same code.
 *
 * <p>Sequence parallelism splits the token rows {@code [N = B*T, C]} of the residual stream (norms,
 * dropout, residual adds) into {@code size()} contiguous blocks, rank r holding rows
 * {@code [r N/size, (r+1) N/size)}; with {@code B = 1} this is exactly Megatron's split of the sequence
 * dimension, and for {@code B > 1} it is another partition of the same tokens, which the per-token
 * operations outside the TP regions cannot tell apart.
 *
 * <p>Threading: one rank's training thread; the group's collectives are ordered with the rank's kernels
 * (see {@link Communicator}). Immutable.
 */
public final class TensorParallel {
    private final Communicator group;
    private final boolean sequenceParallel;

    /**
     * @param group this rank's TP group (a {@link SelfCommunicator} for TP = 1)
     * @param sequenceParallel shard the residual stream along the tokens between the TP regions
     */
    public TensorParallel(Communicator group, boolean sequenceParallel) {
        if (group == null) {
            throw new IllegalArgumentException("tensor-parallel group must not be null (use a SelfCommunicator for TP = 1)");
        }
        this.group = group;
        this.sequenceParallel = sequenceParallel && group.size() > 1;
    }

    /** TP = 1: a group of one, no sequence parallelism. */
    public static TensorParallel none() {
        return new TensorParallel(new SelfCommunicator(), false);
    }

    public Communicator group() {
        return group;
    }

    public int rank() {
        return group.rank();
    }

    public int size() {
        return group.size();
    }

    /** True only when requested and the group has more than one rank (SP over one rank is plain TP = 1). */
    public boolean sequenceParallel() {
        return sequenceParallel;
    }

    /** The residual-stream rows this rank holds for {@code n} token rows: n / size under SP, else n. */
    public int localRows(int n) {
        if (!sequenceParallel) {
            return n;
        }
        if (n % size() != 0) {
            throw new IllegalArgumentException("sequence parallelism needs the batch's token count (batch x sequence length = "
                    + n + ") divisible by the tensor-parallel size " + size());
        }
        return n / size();
    }

    /** The first global token row of this rank's residual-stream shard. */
    public int firstLocalRow(int n) {
        return sequenceParallel ? rank() * localRows(n) : 0;
    }

    /** {@code a} divided by the TP size, with an error naming {@code what} if it does not divide. */
    public int divide(int a, String what) {
        if (a % size() != 0) {
            throw new IllegalArgumentException(what + " " + a + " is not divisible by the tensor-parallel size " + size());
        }
        return a / size();
    }

    @Override
    public String toString() {
        return "TP rank " + rank() + "/" + size() + (sequenceParallel ? " +SP" : "");
    }
}
