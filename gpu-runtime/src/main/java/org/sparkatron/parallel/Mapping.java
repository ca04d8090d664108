package org.sparkatron.parallel;

import org.sparkatron.tensor.Tensor;

/**
 * A communication step between regions of a tensor-parallel model, with the backward that autograd
 * would derive for it (Megatron Core's {@code tensor_parallel/mappings.py} pairs). Tensors are row-major
 * {@code [rows, cols]} F32; "sequence" mappings split the rows into {@code tp} contiguous blocks, "tensor"
 * mappings split the columns (the last dimension). For a group of one every mapping is the identity
 * (a copy when {@code in != out}).
 *
 * <p>Stream order, blocking and failure: each call is a collective over the TP group (every rank calls the
 * same mapping in the same order), ordered with the rank's kernels, and fails with the communicator's
 * {@code CommException} if a peer does. An instance belongs to one rank's thread (some keep scratch
 * memory on the rank's device, returned by {@link #close()}).
 */
public interface Mapping {
    /** Forward: {@code out} from {@code in}; they may be the same tensor where the shapes are equal. */
    void forward(Tensor in, Tensor out);

    /** Backward: {@code gradIn} (shaped like the forward's input) from {@code gradOut} (like its output). */
    void backward(Tensor gradOut, Tensor gradIn);

    /** Returns scratch memory to the device (nothing for most mappings). */
    default void close() {
    }
}
