package org.sparkatron.parallel;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
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
    private final int vocabLocal;
    private final int vocabStart;
    private final int validLocal;
    private final int vocab;
    private Tensor maxes;   // [rows]
    private Tensor sums;    // [2 rows]: (sum of exp, target logit) per row

    /** @param vocabLocal columns per rank; {@code vocab} the real (unpadded) vocabulary size */
    public VocabParallelCrossEntropy(TensorParallel tp, int vocabLocal, int vocab) {
        this.tp = tp;
        this.vocabLocal = vocabLocal;
        this.vocabStart = tp.rank() * vocabLocal;
        this.validLocal = Math.max(0, Math.min(vocabLocal, vocab - vocabStart));
        this.vocab = vocab;
    }

    /**
     * Losses of {@code rows} rows into {@code losses[0, rows)}; with {@code backward} the local logits are
     * replaced, in place, by {@code gradScale * (softmax - onehot)} over this rank's columns.
     *
     * @param logits [rows, vocabLocal] this rank's logits; targets [rows] ids in [0, vocab)
     */
    public void forward(Tensor logits, Tensor losses, Tensor targets, int rows, boolean backward, float gradScale) {
        if (maxes == null || maxes.numel() < rows) {
            maxes = Tensor.allocateHost(DType.F32, rows);
            sums = Tensor.allocateHost(DType.F32, 2 * rows);
        }
        Tensor mx = maxes.slice(0, rows);
        Tensor sm = sums.slice(0, 2 * rows);
        ByteBuffer zb = logits.hostBuffer();
        FloatBuffer z = logits.floats();
        FloatBuffer m = mx.floats();
        FloatBuffer s = sm.floats();
        IntBuffer tg = targets.ints();
        for (int r = 0; r < rows; r++) {
            m.put(r, validLocal > 0 ? VectorMath.max(zb, r * vocabLocal, validLocal) : Float.NEGATIVE_INFINITY);
        }
        if (tp.size() > 1) {
            tp.group().allReduce(mx, ReduceOp.MAX);
        }
        for (int r = 0; r < rows; r++) {
            int target = tg.get(r);
            if (target < 0 || target >= vocab) {
                throw new IllegalArgumentException("target id " + target + " at row " + r + " is outside the vocabulary of " + vocab);
            }
            int local = target - vocabStart;
            float zTarget = local >= 0 && local < validLocal ? z.get(r * vocabLocal + local) : 0f;
            double sum = validLocal > 0 ? VectorMath.expShiftSum(zb, r * vocabLocal, validLocal, m.get(r), backward) : 0;
            s.put(2 * r, (float) sum).put(2 * r + 1, zTarget);
        }
        if (tp.size() > 1) {
            tp.group().allReduce(sm, ReduceOp.SUM);
        }
        FloatBuffer ls = losses.floats();
        for (int r = 0; r < rows; r++) {
            double sum = s.get(2 * r);
            ls.put(r, (float) (m.get(r) + Math.log(sum) - s.get(2 * r + 1)));
            if (!backward) {
                continue;
            }
            int base = r * vocabLocal;
            VectorMath.scale(zb, base, validLocal, (float) (gradScale / sum));
            int local = tg.get(r) - vocabStart;
            if (local >= 0 && local < validLocal) {
                z.put(base + local, z.get(base + local) - gradScale);
            }
            for (int j = validLocal; j < vocabLocal; j++) {
                z.put(base + j, 0f); // padded columns: no gradient
            }
        }
    }
}
