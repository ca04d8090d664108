package org.sparkatron.model;

import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Buffers one rank's chunks share, because only one layer (or one output-layer chunk) computes at a time:
 * the layers' backward and recomputation {@link TransformerBlock.Scratch}, and the logits of one chunk of
 * rows of the output layer. Sized for a micro-batch shape and recompute mode; resized (old buffers back to
 * the device) when either changes. One rank's thread.
 */
final class RankBuffers {
    /** Logits computed at once: at most 64 Mi floats (256 MB). */
    static final long LOGITS_CHUNK_FLOATS = 64L << 20;

    private final Device device;
    private final int vocabLocal;
    private final boolean holdsLoss;
    private BlockActivations.Shape shape;
    private Recompute mode;
    private TransformerBlock.Scratch scratch;
    private Tensor logits;
    private int logitsRows;

    RankBuffers(Device device, int vocabLocal, boolean holdsLoss) {
        this.device = device;
        this.vocabLocal = vocabLocal;
        this.holdsLoss = holdsLoss;
    }

    /** Rows of logits computed at once for {@code n} token rows and {@code vocabLocal} columns per rank. */
    static int logitsRows(long n, long vocabLocal) {
        return (int) Math.max(1, Math.min(n, LOGITS_CHUNK_FLOATS / vocabLocal));
    }

    void prepare(BlockActivations.Shape s, Recompute m) {
        if (s.equals(shape) && m == mode) {
            return;
        }
        release();
        shape = s;
        mode = m;
        scratch = new TransformerBlock.Scratch(device, s, m);
        if (holdsLoss) {
            logitsRows = logitsRows(s.n(), vocabLocal);
            logits = device.allocate(MemoryKind.WORKSPACE, DType.F32, logitsRows, vocabLocal);
        }
    }

    TransformerBlock.Scratch scratch() {
        return scratch;
    }

    Tensor logits() {
        return logits;
    }

    int logitsRows() {
        return logitsRows;
    }

    void release() {
        if (scratch != null) {
            scratch.release();
            device.release(logits);
            scratch = null;
            logits = null;
            shape = null;
        }
    }
}
