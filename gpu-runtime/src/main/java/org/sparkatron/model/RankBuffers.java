package org.sparkatron.model;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.parallel.AttentionCore;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Buffers one rank's chunks share, because only one layer (or one output-layer chunk) computes at a time:
 * the layers' backward and recomputation {@link TransformerBlock.Scratch}, the attention core's buffers, the
 * logits of one chunk of rows of the output layer, and under context parallelism the global position of each
 * local row of a sequence. Sized for a micro-batch shape and recompute mode; resized (old buffers back to the
 * device) when either changes. One rank's thread.
 */
final class RankBuffers {
    /** Logits computed at once: at most 64 Mi floats (256 MB). */
    static final long LOGITS_CHUNK_FLOATS = 64L << 20;

    private final Device device;
    private final int vocabLocal;
    private final boolean holdsLoss;
    private final ContextParallel cp;
    private final AttentionCore attention;
    private Tensor positions; // I32 [T] (context parallelism only)
    private BlockActivations.Shape shape;
    private Recompute mode;
    private TransformerBlock.Scratch scratch;
    private Tensor logits;
    private int logitsRows;

    RankBuffers(Device device, int vocabLocal, boolean holdsLoss, ContextParallel cp, AttentionCore attention) {
        this.device = device;
        this.vocabLocal = vocabLocal;
        this.holdsLoss = holdsLoss;
        this.cp = cp;
        this.attention = attention;
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
        if (cp.size() > 1) { // uploaded once per shape: every step reads it on the device
            int[] pos = cp.positions(s.seq());
            positions = device.allocate(MemoryKind.WORKSPACE, DType.I32, pos.length);
            ByteBuffer host = ByteBuffer.allocateDirect(4 * pos.length).order(ByteOrder.nativeOrder());
            host.asIntBuffer().put(pos);
            device.upload(positions, host);
        }
        scratch = new TransformerBlock.Scratch(device, s, m, positions);
        attention.prepare(s.b(), s.t(), s.hl(), s.kvl(), s.hd());
        if (holdsLoss) {
            logitsRows = logitsRows(s.n(), vocabLocal);
            logits = device.allocate(MemoryKind.WORKSPACE, DType.F32, logitsRows, vocabLocal);
        }
    }

    TransformerBlock.Scratch scratch() {
        return scratch;
    }

    /** The rank's attention core, shared by all its layers. */
    AttentionCore attention() {
        return attention;
    }

    /** The global position of each local row of a sequence (I32 [T]), or null without context parallelism. */
    Tensor positions() {
        return positions;
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
            device.release(positions);
            attention.close();
            scratch = null;
            logits = null;
            positions = null;
            shape = null;
        }
    }
}
