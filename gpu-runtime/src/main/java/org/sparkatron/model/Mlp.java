package org.sparkatron.model;

import org.sparkatron.device.Device;
import org.sparkatron.tensor.Tensor;

/**
 * The MLP branch of a {@link TransformerBlock}: the dense SwiGLU/GELU MLP ({@link DenseMlp}) or a mixture of
 * experts ({@link MoeMlp}). Stateless like the block: what a micro-batch keeps for the backward is a
 * {@link Kept} the MLP makes ({@link #kept}), held by the micro-batch's {@link BlockActivations}; buffers
 * shared by every layer of the rank live in the chunk's {@link TransformerBlock.Scratch}.
 *
 * <p>Input: the block's second norm output {@code [Nl, C]} (this rank's residual rows). Output: the branch
 * {@code [Nl, C]} before dropout and the residual add, reduced over the TP group. Every call only issues
 * device work and TP (and, for experts, EP) collectives; one rank's thread.
 */
interface Mlp {
    /** What one micro-batch keeps for the backward; its device memory goes back with {@link #release()}. */
    interface Kept {
        void release();
    }

    /**
     * What a micro-batch keeps under {@code mode}: everything needed by the backward, or under
     * {@link Recompute#FULL} only what the recomputation must repeat exactly (may be null).
     */
    Kept kept(Device device, BlockActivations.Shape s, Recompute mode);

    /**
     * The forward of one micro-batch. {@code work} receives the activations; {@code record} is the
     * micro-batch's own {@link Kept} (the same object unless recomputing into scratch). With
     * {@code recompute} the pass repeats an earlier forward of the same micro-batch (from {@code record}),
     * bitwise, without adding to the step's statistics again.
     */
    void forward(Kept work, Kept record, Tensor in, BlockActivations.Shape s, TransformerBlock.Scratch sc, Tensor out,
                 boolean recompute);

    /**
     * The backward: {@code din} [Nl, C] is overwritten with dLoss/d(in) reduced over the TP group; parameter
     * gradients are accumulated. {@code a} holds this micro-batch's forward (or its recomputation).
     */
    void backward(Kept a, Tensor in, Tensor dout, Tensor din, BlockActivations.Shape s, TransformerBlock.Scratch sc);

    /** Whether this is a mixture of experts. */
    boolean isMoe();

    /** Returns transient buffers to the device. */
    void close();
}
