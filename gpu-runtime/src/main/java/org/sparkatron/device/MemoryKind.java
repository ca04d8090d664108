package org.sparkatron.device;

/** What a block of device memory holds: the categories of the memory report. */
public enum MemoryKind {
    /** Model weights: fp32 master weights and, under mixed precision, their 16-bit compute copy. */
    PARAMETERS,
    /** The gradient block (fp32). */
    GRADIENTS,
    /** Optimizer state: AdamW's moments. */
    OPTIMIZER,
    /** Activations saved by forward for backward, and the backward's activation gradients. */
    ACTIVATIONS,
    /** Transient buffers: gathered rows, logits chunks, kernel scratch, step scalars, token ids. */
    WORKSPACE
}
