package org.sparkatron.parallel;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.SelfCommunicator;

/**
 * One rank's place in the expert-parallel grid (Megatron's): the expert-parallel group, whose ranks split
 * each MoE layer's experts (rank r holds experts {@code [r E/ep, (r+1) E/ep)}) and exchange tokens by
 * all-to-all, and the expert-data-parallel group, the ranks that hold the same experts and average their
 * gradients. Dense layers see the EP ranks as data-parallel replicas. A group of one ({@link #none()}) is no
 * expert parallelism. Immutable.
 */
public final class ExpertParallel {
    private static final ExpertParallel NONE = new ExpertParallel(new SelfCommunicator(), null);
    private final Communicator group;
    private final Communicator expertDataParallel;

    /**
     * @param group              the EP group (ranks with the same TP, CP, DP and PP coordinates)
     * @param expertDataParallel the expert-data-parallel group (null: none, or handled by the caller)
     */
    public ExpertParallel(Communicator group, Communicator expertDataParallel) {
        this.group = group;
        this.expertDataParallel = expertDataParallel;
    }

    public static ExpertParallel none() {
        return NONE;
    }

    public Communicator group() {
        return group;
    }

    /** The ranks holding the same experts (null when not given). */
    public Communicator expertDataParallel() {
        return expertDataParallel;
    }

    public int rank() {
        return group.rank();
    }

    public int size() {
        return group.size();
    }

    @Override
    public String toString() {
        return "EP " + rank() + "/" + size();
    }
}
