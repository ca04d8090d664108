package org.sparkatron.model;

/**
 * Told, during a forward pass, which parameters the pass is about to read, before it reads them (Megatron's
 * forward pre-hooks): the embedding's before the embedding, each layer's before the layer, the final norm's
 * and the output layer's before the head. The data-parallel model waits there for the all-gather of the
 * bucket holding them when that gather overlaps the forward ({@code overlap_param_gather}). Called on the
 * rank's thread, before the kernels that read the parameters are issued; may block until they are ready.
 */
public interface ForwardPreHook {
    /** The forward is about to read parameters {@code params} (layout indices). */
    void beforeUse(int[] params);
}
