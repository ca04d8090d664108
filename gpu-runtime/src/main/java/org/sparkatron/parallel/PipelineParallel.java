package org.sparkatron.parallel;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.SelfCommunicator;

/**
 * One rank's place in the pipeline: its pipeline group (Megatron's {@code pipeline_model_parallel_group}:
 * the ranks holding the other stages of the same TP/DP position), its stage, the layer layout, and the
 * embedding group (the first and the last stage, which both hold a tied input/output embedding; null on
 * the stages between). A group of one ({@link #none}) is no pipelining. Immutable.
 */
public final class PipelineParallel {
    private final Communicator group;
    private final PipelineLayout layout;
    private final Communicator embeddingGroup;

    public PipelineParallel(Communicator group, PipelineLayout layout, Communicator embeddingGroup) {
        if (group.size() != layout.stages()) {
            throw new IllegalArgumentException("pipeline group of " + group.size() + " ranks for a layout of " + layout.stages()
                    + " stages");
        }
        this.group = group;
        this.layout = layout;
        this.embeddingGroup = embeddingGroup;
    }

    /** No pipelining for a model of {@code layers} layers. */
    public static PipelineParallel none(int layers) {
        return new PipelineParallel(new SelfCommunicator(), PipelineLayout.single(layers), null);
    }

    public Communicator group() {
        return group;
    }

    public PipelineLayout layout() {
        return layout;
    }

    /** The first and last stage (null elsewhere, and for a single stage). */
    public Communicator embeddingGroup() {
        return embeddingGroup;
    }

    public int stage() {
        return group.rank();
    }

    public int size() {
        return group.size();
    }

    /** Model chunks on this rank (the virtual pipeline size). */
    public int chunks() {
        return layout.virtualStages();
    }

    /** Whether this rank holds the first layers (the embedding). */
    public boolean holdsFirst() {
        return layout.isFirst(stage(), 0);
    }

    /** Whether this rank holds the last layers (final norm, output layer, loss). */
    public boolean holdsLast() {
        return layout.isLast(stage(), chunks() - 1);
    }

    @Override
    public String toString() {
        return "PP stage " + stage() + "/" + size() + (chunks() > 1 ? " x" + chunks() + " chunks" : "");
    }
}
