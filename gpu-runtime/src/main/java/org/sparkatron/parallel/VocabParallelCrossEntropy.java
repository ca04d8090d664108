package org.sparkatron.parallel;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;

import org.sparkatron.comm.ReduceOp;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Softmax cross-entropy over logits whose vocabulary is split over the TP group (Megatron's
 * {@code vocab_parallel_cross_entropy}): rank r holds columns {@code [r Vl, (r+1) Vl)} of the padded
 * vocabulary. Per row: the max over every rank's valid columns (all-reduce MAX), then the sum of
 * {@code exp(z - max)} and the target's logit (one all-reduce SUM of both; only the owner contributes the
 * target's), so {@code loss = log(sum) + max - z_target}. No rank ever holds a full row. Padded columns
 * ({@code >= vocab}) are excluded from the softmax and get zero gradient, so they never affect the loss.
 *
 * <p>Threading and failure: one rank's thread; each call is a TP collective (two all-reduces).
 */
public final class VocabParallelCrossEntropy {
    private final TensorParallel tp;
    private final Device device;
    private final Kernels kernels;
    private final int vocabLocal;
    private final int vocabStart;
    private final int validLocal;
    private final int vocab;
    private Tensor maxes;   // [rows]
    private Tensor sums;    // [2 rows]: (sum of exp, target logit) per row

    /** @param vocabLocal columns per rank; {@code vocab} the real (unpadded) vocabulary size */
    public VocabParallelCrossEntropy(RankContext ctx, int vocabLocal, int vocab) {
        TensorParallel tp = ctx.tp();
        this.tp = tp;
        this.device = ctx.device();
        this.kernels = ctx.kernels();
        this.vocabLocal = vocabLocal;
        this.vocabStart = tp.rank() * vocabLocal;
        this.validLocal = Math.max(0, Math.min(vocabLocal, vocab - vocabStart));
        this.vocab = vocab;
    }

    /** Allocates the per-row statistics for up to {@code rows} rows now (the first call would otherwise). */
    public void prepare(int rows) {
        if (maxes == null || maxes.numel() < rows) {
            device.release(maxes);
            device.release(sums);
            maxes = device.allocate(MemoryKind.WORKSPACE, DType.F32, rows);
            sums = device.allocate(MemoryKind.WORKSPACE, DType.F32, 2 * rows);
        }
    }

    /** Returns the per-row statistics buffers to the device. */
    public void close() {
        device.release(maxes);
        device.release(sums);
        maxes = null;
        sums = null;
    }

    /**
     * Losses of {@code rows} rows into {@code losses[0, rows)}; with {@code backward} the local logits are
     * replaced, in place, by {@code gradScale * (softmax - onehot)} over this rank's columns.
     *
     * @param logits [rows, vocabLocal] this rank's logits; targets [rows] ids in [0, vocab)
     */
    public void forward(Tensor logits, Tensor losses, Tensor targets, int rows, boolean backward, float gradScale) {
        prepare(rows);
        Tensor mx = maxes.slice(0, rows);
        Tensor sm = sums.slice(0, 2 * rows);
        if (tp.size() == 1) { // nothing to reduce between the three: one fused call
            kernels.crossEntropy(logits, mx, sm, losses, targets, vocab, rows, validLocal, vocabLocal, backward, gradScale);
            return;
        }
        kernels.crossEntropyMax(logits, mx, rows, validLocal, vocabLocal);
        if (tp.size() > 1) {
            tp.group().allReduce(mx, ReduceOp.MAX);
        }
        kernels.crossEntropySums(logits, mx, sm, targets, vocabStart, vocab, rows, validLocal, vocabLocal, backward);
        if (tp.size() > 1) {
            tp.group().allReduce(sm, ReduceOp.SUM); // sum of exp and the target's logit (only its owner's is non-zero)
        }
        kernels.crossEntropyFinish(logits, mx, sm, losses, targets, vocabStart, rows, validLocal, vocabLocal, backward, gradScale);
    }
}
