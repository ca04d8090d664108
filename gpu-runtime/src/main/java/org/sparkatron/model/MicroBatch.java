package org.sparkatron.model;

import java.util.ArrayList;
import java.util.List;
import org.sparkatron.comm.Request;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One micro-batch in flight through one {@link ModelChunk}: everything its forward keeps for its backward
 * (an llm.c-style set of activation buffers per micro-batch, from the rank's device), its token ids, its
 * dropout key, and the messages still being sent from its buffers. A chunk keeps a pool of these, as many
 * as its pipeline schedule has micro-batches in flight, reused from step to step.
 *
 * <p>Shapes: N = B T token rows, Nl this rank's residual rows (N / tp under sequence parallelism), C width.
 * One rank's thread.
 */
final class MicroBatch {
    final BlockActivations.Shape shape;
    final Recompute mode;
    final BlockActivations[] blocks; // the chunk's layers, in order
    final Tensor tokens;   // [2N] I32: inputs then targets (chunks with the embedding or the loss), else null
    final Tensor input;    // [Nl, C] the first layer's input: the embedding's output, or received
    final Tensor grad;     // [Nl, C] dLoss/d(output) coming in (received, or from the final norm), then dLoss/d(input)
    // the chunk ending the model
    final Tensor normF;    // [Nl, C]
    final Tensor meanF;    // [Nl] (LayerNorm)
    final Tensor rstdF;    // [Nl]
    final Tensor headX;    // [N, C] the output layer's input (normF itself without SP)
    final Tensor dheadX;   // [N, C] its gradient, computed during the forward (the output layer is fused with the loss)
    final Tensor losses;   // [N] per-token cross-entropy
    TransformerBlock.DropKey drop = TransformerBlock.DropKey.NONE;
    private final List<Request> sending = new ArrayList<>();
    private final Device device;

    MicroBatch(Device device, BlockActivations.Shape s, List<TransformerBlock> layers, boolean first, boolean last,
               Recompute mode) {
        this.device = device;
        this.shape = s;
        this.mode = mode;
        blocks = new BlockActivations[layers.size()];
        for (int i = 0; i < blocks.length; i++) {
            blocks[i] = new BlockActivations(device, s, mode, layers.get(i).mlp());
        }
        tokens = first || last ? device.allocate(MemoryKind.WORKSPACE, DType.I32, 2L * s.n()) : null;
        input = f32(s.nl(), s.c());
        grad = f32(s.nl(), s.c());
        normF = last ? f32(s.nl(), s.c()) : null;
        meanF = last && s.layerNorm() ? f32(s.nl()) : null;
        rstdF = last ? f32(s.nl()) : null;
        headX = last ? (s.sp() ? f32(s.n(), s.c()) : normF) : null;
        dheadX = last ? (s.sp() ? f32(s.n(), s.c()) : f32(s.nl(), s.c())) : null;
        losses = last ? device.allocate(MemoryKind.WORKSPACE, DType.F32, s.n()) : null;
    }

    private Tensor f32(int... shape) {
        return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
    }

    /** The chunk's output: its last layer's output (its input when the chunk has no layers). */
    Tensor output() {
        return blocks.length == 0 ? input : blocks[blocks.length - 1].output;
    }

    /** The input of layer {@code i} of the chunk. */
    Tensor layerInput(int i) {
        return i == 0 ? input : blocks[i - 1].output;
    }

    /** The model's inputs (token ids) and targets, views of {@link #tokens}. */
    Tensor inputs() {
        return tokens.slice(0, shape.n());
    }

    Tensor targets() {
        return tokens.slice(shape.n(), shape.n());
    }

    /** Remembers a send from this micro-batch's buffers, waited for before the buffers are reused. */
    void sending(Request r) {
        sending.add(r);
    }

    /** Waits for the sends from this micro-batch's buffers. */
    void awaitSends() {
        for (Request r : sending) {
            r.await();
        }
        sending.clear();
    }

    void release() {
        awaitSends();
        for (BlockActivations b : blocks) {
            b.release();
        }
        for (Tensor x : new Tensor[] {tokens, input, grad, normF, meanF, rstdF, losses, dheadX}) {
            device.release(x);
        }
        if (headX != normF) {
            device.release(headX);
        }
    }
}
