package org.sparkatron.precision;

import org.sparkatron.device.AttentionBlock;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MoeKernels;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Emulates 16-bit activation storage on an fp32 device: wraps another {@link Kernels} and rounds, to
 * {@code precision}'s format, every activation and activation gradient that a GPU kernel would store in
 * 16 bits, leaving fp32 what a GPU keeps fp32. docs/precision.md has the full table; in short:
 *
 * <ul>
 *   <li><b>Rounded outputs</b>: linear (GEMM + bias epilogue) outputs, norm outputs, GELU/SwiGLU outputs,
 *       residual adds, RoPE'd q/k, attention outputs; in the backward the activation gradients
 *       {@code dx} of linear layers, norms, activations, attention and RoPE (accumulated results are
 *       rounded after the accumulation, as a 16-bit buffer would hold them).</li>
 *   <li><b>Operands rounded on entry</b> (in place): the {@code x} of a linear forward, the incoming
 *       gradient {@code dout} of every backward kernel and both addends of {@link #add}. For values made
 *       by a rounded kernel this changes nothing (rounding is idempotent); it catches the few values made
 *       outside kernels, which a GPU would also store in 16 bits: the sums of tensor-parallel reductions.
 *       Dropout and bias adds round their outputs. The cross-entropy gradient (dlogits) is rounded when
 *       {@link #crossEntropyFinish} writes it.</li>
 *   <li><b>Kept fp32</b>: weight and bias gradients (accumulated in fp32, as Megatron's gradient
 *       accumulation fusion writes them into {@code main_grad}), norm statistics (mean, rstd), attention's
 *       log-sum-exp, losses, and everything the optimizer touches ({@link #adamw}, {@link #sumOfSquares},
 *       {@link #sum}, {@link #scale}, {@link #fill}, {@link #zero}, {@link #round} pass through unchanged). Inside a fused kernel intermediates stay
 *       fp32 (GEMMs accumulate in fp32; softmax statistics are fp32).</li>
 * </ul>
 * Weights are not rounded here: the model computes from a rounded copy of its fp32 master weights. The
 * mixture-of-experts kernels of {@link #moe()} round likewise ({@link RoundingMoeKernels}).
 *
 * <p>Threading: as the wrapped kernels (one rank's thread); stateless itself.
 */
public final class RoundingKernels implements Kernels {
    private final Kernels k;
    private final Precision p;
    private MoeKernels moe;

    /** @param precision BF16, FP16 or FP8 (bf16 storage) (FP32 needs no wrapper and is refused, to catch a wiring mistake) */
    public RoundingKernels(Kernels delegate, Precision precision) {
        if (!precision.isReduced()) {
            throw new IllegalArgumentException("RoundingKernels emulates 16-bit storage; " + precision + " needs no wrapper");
        }
        this.k = delegate;
        this.p = precision;
    }

    /** Wraps {@code delegate} for {@code precision}, or returns it unchanged for FP32. */
    public static Kernels wrap(Kernels delegate, Precision precision) {
        return precision.isReduced() ? new RoundingKernels(delegate, precision) : delegate;
    }

    public Precision precision() {
        return p;
    }

    /** The wrapped fp32 kernels. */
    public Kernels delegate() {
        return k;
    }

    /** Rounds {@code t[0, count)} in place to the precision's 16-bit format (nothing for a null tensor). */
    void round(Tensor t, long count) {
        if (t != null) {
            k.round(t, t, count, p.format());
        }
    }

    @Override
    public void linearForward(Tensor out, Tensor x, Tensor w, Tensor bias, int n, int in, int outF) {
        round(x, (long) n * in);
        k.linearForward(out, x, w, bias, n, in, outF);
        round(out, (long) n * outF);
    }

    @Override
    public void linearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor x, Tensor w,
                               int n, int in, int outF) {
        round(dout, (long) n * outF);
        k.linearBackward(dx, accumulateDx, dw, dbias, dout, x, w, n, in, outF);
        round(dx, (long) n * in);
    }

    @Override
    public void embeddingForward(Tensor out, Tensor tokens, Tensor table, int vocabStart, int n, int c) {
        k.embeddingForward(out, tokens, table, vocabStart, n, c); // copies of 16-bit rows (or zeros): exact
    }

    @Override
    public void embeddingBackward(Tensor dtable, Tensor dout, Tensor tokens, int vocabStart, int n, int c) {
        round(dout, (long) n * c);
        k.embeddingBackward(dtable, dout, tokens, vocabStart, n, c);
    }

    @Override
    public void addPositions(Tensor x, Tensor wpe, Tensor positions, int firstRow, int rows, int t, int c) {
        round(x, (long) rows * c);
        k.addPositions(x, wpe, positions, firstRow, rows, t, c);
        round(x, (long) rows * c); // token + position: the sum of two 16-bit rows, stored in 16 bits
    }

    @Override
    public void positionsBackward(Tensor dwpe, Tensor dx, Tensor positions, int firstRow, int rows, int t, int c) {
        round(dx, (long) rows * c);
        k.positionsBackward(dwpe, dx, positions, firstRow, rows, t, c);
    }

    @Override
    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, int n, int c, float eps) {
        k.layerNormForward(out, mean, rstd, x, w, b, n, c, eps);
        round(out, (long) n * c);
    }

    @Override
    public void layerNormBackward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean, Tensor rstd,
                                  int n, int c) {
        round(dout, (long) n * c);
        k.layerNormBackward(dx, dw, db, dout, x, w, mean, rstd, n, c);
        round(dx, (long) n * c);
    }

    @Override
    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor w, int n, int c, float eps) {
        k.rmsNormForward(out, rstd, x, w, n, c, eps);
        round(out, (long) n * c);
    }

    @Override
    public void rmsNormBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, int n, int c) {
        round(dout, (long) n * c);
        k.rmsNormBackward(dx, dw, dout, x, w, rstd, n, c);
        round(dx, (long) n * c);
    }

    @Override
    public void geluForward(Tensor out, Tensor x, long count) {
        k.geluForward(out, x, count);
        round(out, count);
    }

    @Override
    public void geluBackward(Tensor dx, Tensor dout, Tensor x, long count) {
        round(dout, count);
        k.geluBackward(dx, dout, x, count);
        round(dx, count);
    }

    @Override
    public void swigluForward(Tensor out, Tensor gateUp, int n, int f) {
        k.swigluForward(out, gateUp, n, f);
        round(out, (long) n * f);
    }

    @Override
    public void swigluBackward(Tensor dGateUp, Tensor dout, Tensor gateUp, int n, int f) {
        round(dout, (long) n * f);
        k.swigluBackward(dGateUp, dout, gateUp, n, f);
        round(dGateUp, 2L * n * f);
    }

    @Override
    public void add(Tensor out, Tensor a, Tensor b, long count) {
        round(a, count);
        round(b, count);
        k.add(out, a, b, count);
        round(out, count);
    }

    @Override
    public void rope(Tensor qkv, Tensor cos, Tensor sin, Tensor positions, int b, int t, int heads, int kvHeads, int hd,
                     boolean inverse) {
        k.rope(qkv, cos, sin, positions, b, t, heads, kvHeads, hd, inverse);
        round(qkv, (long) b * t * (heads + 2L * kvHeads) * hd);
    }

    @Override
    public void attentionForward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        k.attentionForward(out, lse, qkv, b, t, heads, kvHeads, hd);
        round(out, (long) b * t * heads * hd);
    }

    @Override
    public void attentionBackward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads,
                                  int kvHeads, int hd) {
        round(dout, (long) b * t * heads * hd);
        k.attentionBackward(dqkv, dout, out, lse, qkv, b, t, heads, kvHeads, hd);
        round(dqkv, (long) b * t * (heads + 2L * kvHeads) * hd);
    }

    // Attention in blocks (context parallelism): partial outputs, their merge and the gradients accumulated over
    // blocks stay fp32, as Transformer Engine's ring attention corrects its outputs in fp32; what a 16-bit buffer
    // holds is rounded where it is consumed (the output projection rounds its input in place; RoPE and the QKV
    // projection's backward round the q/k/v gradient), so the values that leave the attention are 16-bit.

    @Override
    public void attentionBlockForward(Tensor out, Tensor lse, Tensor q, int qld, Tensor kv, int kvld, AttentionBlock blk) {
        k.attentionBlockForward(out, lse, q, qld, kv, kvld, blk);
    }

    @Override
    public void attentionBlockBackward(Tensor dq, int dqld, Tensor dkv, int dkvld, Tensor dout, Tensor out, Tensor lse,
                                       Tensor q, int qld, Tensor kv, int kvld, AttentionBlock blk) {
        round(dout, (long) blk.batch() * blk.qSeq() * blk.width());
        k.attentionBlockBackward(dq, dqld, dkv, dkvld, dout, out, lse, q, qld, kv, kvld, blk);
    }

    @Override
    public void attentionMerge(Tensor out, Tensor lse, Tensor partOut, Tensor partLse, AttentionBlock blk) {
        k.attentionMerge(out, lse, partOut, partLse, blk);
    }

    // Cross-entropy reads 16-bit logits (rounded by the head's linearForward) and computes in fp32; the
    // exponentials it may store in the logits between its calls are fp32 intermediates of one fused kernel.

    @Override
    public void crossEntropyMax(Tensor logits, Tensor max, int rows, int valid, int ld) {
        k.crossEntropyMax(logits, max, rows, valid, ld);
    }

    @Override
    public void crossEntropySums(Tensor logits, Tensor max, Tensor sums, Tensor targets, int vocabStart, int vocab, int rows,
                                 int valid, int ld, boolean storeExp) {
        k.crossEntropySums(logits, max, sums, targets, vocabStart, vocab, rows, valid, ld, storeExp);
    }

    @Override
    public void crossEntropyFinish(Tensor logits, Tensor max, Tensor sums, Tensor losses, Tensor targets, int vocabStart,
                                   int rows, int valid, int ld, boolean backward, float gradScale) {
        k.crossEntropyFinish(logits, max, sums, losses, targets, vocabStart, rows, valid, ld, backward, gradScale);
        if (backward) {
            round(logits, (long) rows * ld); // dlogits, stored in 16 bits for the output layer's backward
        }
    }

    @Override
    public void adamw(Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float beta1, float beta2,
                      float eps, float decay, float stepSize, float invSqrtBc2) {
        k.adamw(params, grads, m, v, from, count, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
    }

    @Override
    public void sumOfSquares(Tensor x, Tensor acc, int slot) {
        k.sumOfSquares(x, acc, slot);
    }

    @Override
    public void sum(Tensor x, long count, Tensor acc, int slot, double scale) {
        k.sum(x, count, acc, slot, scale);
    }

    @Override
    public void scale(Tensor x, float factor) {
        k.scale(x, factor);
    }

    @Override
    public void fill(Tensor x, float value) {
        k.fill(x, value);
    }

    @Override
    public void zero(Tensor x) {
        k.zero(x);
    }

    @Override
    public void addBias(Tensor out, Tensor bias, int rows, int cols) {
        k.addBias(out, bias, rows, cols);
        round(out, (long) rows * cols); // the bias add of a row-parallel output, stored in 16 bits
    }

    @Override
    public void dropout(Tensor x, float prob, long base, long firstRow, int rows, int cols) {
        k.dropout(x, prob, base, firstRow, rows, cols);
        round(x, (long) rows * cols); // rescaled by 1/(1-p): stored in 16 bits
    }

    @Override
    public void round(Tensor dst, Tensor src, long count, DType format) {
        k.round(dst, src, count, format);
    }

    @Override
    public void widen(Tensor dst, Tensor src, long count) {
        k.widen(dst, src, count);
    }

    // ---- mixture of experts: RoundingMoeKernels, made on the first moe() (the delegate may have none) ----

    @Override
    public boolean hasMoeKernels() {
        return k.hasMoeKernels();
    }

    @Override
    public MoeKernels moe() {
        if (moe == null) {
            moe = new RoundingMoeKernels(k.moe(), this);
        }
        return moe;
    }

    // ---- FP8: casts read bf16 values (rounded on entry, as for any GEMM operand); GEMM outputs are stored in bf16;
    // amaxes, scales and weight gradients stay fp32 ----

    @Override
    public boolean supportsFp8() {
        return k.supportsFp8();
    }

    @Override
    public void amax(Tensor x, long count, Tensor amax, int slot) {
        round(x, count);
        k.amax(x, count, amax, slot);
    }

    @Override
    public void castToFp8(Tensor dst, Tensor src, long count, Fp8Format format, Tensor scale, int slot, Tensor amaxOut,
                          int amaxSlot) {
        round(src, count);
        k.castToFp8(dst, src, count, format, scale, slot, amaxOut, amaxSlot);
    }

    @Override
    public void fp8ScaleFromAmax(Tensor amax, Tensor scale, Tensor scaleInv, int from, int count, float fp8Max) {
        k.fp8ScaleFromAmax(amax, scale, scaleInv, from, count, fp8Max);
    }

    @Override
    public void fp8DelayedScaling(Tensor history, Tensor scale, Tensor scaleInv, int len, int slots, int from, int count,
                                  boolean useMax, float scaledMax) {
        k.fp8DelayedScaling(history, scale, scaleInv, len, slots, from, count, useMax, scaledMax);
    }

    @Override
    public void fp8LinearForward(Tensor out, Tensor x8, Tensor w8, Tensor scaleInv, int xSlot, int wSlot, Tensor bias, int n,
                                 int in, int outF) {
        k.fp8LinearForward(out, x8, w8, scaleInv, xSlot, wSlot, bias, n, in, outF);
        round(out, (long) n * outF); // the GEMM's bf16 output
    }

    @Override
    public void fp8LinearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor dy8, Tensor x8,
                                  Tensor w8, Tensor scaleInv, int dySlot, int xSlot, int wSlot, int n, int in, int outF) {
        round(dout, (long) n * outF);
        k.fp8LinearBackward(dx, accumulateDx, dw, dbias, dout, dy8, x8, w8, scaleInv, dySlot, xSlot, wSlot, n, in, outF);
        round(dx, (long) n * in);
    }
}
