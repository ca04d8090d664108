package org.sparkatron.device;

import org.sparkatron.tensor.DType;
import org.sparkatron.precision.Fp8Format;
import org.sparkatron.tensor.Tensor;

/**
 * The kernel set a transformer rank needs, each a forward and a backward with matching arguments
 * (llm.c style). Activations are row-major {@code [N, C]} with {@code N = B * T} rows (token-major).
 *
 * <p>Conventions: backward kernels ACCUMULATE into parameter gradients ({@code dw += ...}, so gradient
 * accumulation over micro-batches is free) and into {@code dx} where the name says {@code Accumulate};
 * otherwise they overwrite. Tensors are the device's ({@link Device}); counts and offsets are 64-bit
 * where a flat block may exceed 2^31 elements.
 *
 * <p>Stream order: an instance belongs to one rank's {@link Device}. Its calls execute in the order issued,
 * together with the device's copies and the rank's communicator operations; a call may return before its
 * result is in memory, and the host sees results only after {@link Device#synchronize()} (or a
 * synchronising copy). Nothing here returns a value computed from device memory: reductions write device
 * scalars. Not thread-safe; kernel scratch belongs to the instance.
 */
public interface Kernels {
    // ---- GEMM-backed linear layer: out[N,O] = x[N,I] * w[O,I]^T + b[O] ----

    void linearForward(Tensor out, Tensor x, Tensor w, Tensor bias, int n, int in, int outF);

    /** dx[N,I] = dout * w (overwritten, or accumulated when accumulateDx); dw += dout^T x; db += sum dout. */
    void linearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor x, Tensor w,
                        int n, int in, int outF);

    // ---- embeddings: a table may hold only ids [vocabStart, vocabStart + rows) (vocab-parallel shards) ----

    /** {@code out[r] = table[tokens[r] - vocabStart]}, or zeros where the id is not in this table. */
    void embeddingForward(Tensor out, Tensor tokens, Tensor table, int vocabStart, int n, int c);

    /** {@code dtable[tokens[r] - vocabStart] += dout[r]} for the ids this table holds. */
    void embeddingBackward(Tensor dtable, Tensor dout, Tensor tokens, int vocabStart, int n, int c);

    /**
     * Learned positions: {@code x[i] += wpe[pos(firstRow + i)]} for rows i of a block starting at row firstRow of
     * {@code [B * t]} token rows, where {@code pos(r) = positions[r % t]} ({@code positions}: I32 [t], the global
     * position of each of a sequence's t rows, which context parallelism makes non-contiguous), or {@code r % t}
     * when {@code positions} is null.
     */
    void addPositions(Tensor x, Tensor wpe, Tensor positions, int firstRow, int rows, int t, int c);

    /** {@code dwpe[pos(firstRow + i)] += dx[i]}: the backward of {@link #addPositions}. */
    void positionsBackward(Tensor dwpe, Tensor dx, Tensor positions, int firstRow, int rows, int t, int c);

    /** {@link #addPositions(Tensor, Tensor, Tensor, int, int, int, int)} with positions {@code r % t}. */
    default void addPositions(Tensor x, Tensor wpe, int firstRow, int rows, int t, int c) {
        addPositions(x, wpe, null, firstRow, rows, t, c);
    }

    /** {@link #positionsBackward(Tensor, Tensor, Tensor, int, int, int, int)} with positions {@code r % t}. */
    default void positionsBackward(Tensor dwpe, Tensor dx, int firstRow, int rows, int t, int c) {
        positionsBackward(dwpe, dx, null, firstRow, rows, t, c);
    }

    // ---- norms: mean/rstd are [N] per-row statistics saved for backward ----

    void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, int n, int c, float eps);

    /** dx += ...; dw += ...; db += ... */
    void layerNormBackward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean, Tensor rstd,
                           int n, int c);

    void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor w, int n, int c, float eps);

    /** dx += ...; dw += ... */
    void rmsNormBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, int n, int c);

    // ---- activations ----

    /** GELU, tanh approximation. */
    void geluForward(Tensor out, Tensor x, long count);

    void geluBackward(Tensor dx, Tensor dout, Tensor x, long count);

    /** out[N,F] = silu(gateUp[:, :F]) * gateUp[:, F:]. */
    void swigluForward(Tensor out, Tensor gateUp, int n, int f);

    void swigluBackward(Tensor dGateUp, Tensor dout, Tensor gateUp, int n, int f);

    /** out = a + b elementwise. */
    void add(Tensor out, Tensor a, Tensor b, long count);

    // ---- attention over a packed QKV row [q: H*hd | k: Hkv*hd | v: Hkv*hd] ----

    /**
     * Rotary embedding applied in place to the q and k heads of {@code qkv}, Hugging Face's rotate-half
     * convention; {@code cos}/{@code sin} are [maxPos, hd/2] tables; the position of row n is
     * {@code positions[n % t]} ({@code positions}: I32 [t], global positions of a sequence's rows under context
     * parallelism), or {@code n % t} when {@code positions} is null. {@code inverse} applies the transpose (the
     * backward).
     */
    void rope(Tensor qkv, Tensor cos, Tensor sin, Tensor positions, int b, int t, int heads, int kvHeads, int hd,
              boolean inverse);

    /** {@link #rope(Tensor, Tensor, Tensor, Tensor, int, int, int, int, int, boolean)} with positions {@code n % t}. */
    default void rope(Tensor qkv, Tensor cos, Tensor sin, int b, int t, int heads, int kvHeads, int hd, boolean inverse) {
        rope(qkv, cos, sin, null, b, t, heads, kvHeads, hd, inverse);
    }

    /** Causal softmax attention; {@code lse} [B, H, T] keeps each row's log-sum-exp for backward. */
    void attentionForward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd);

    /** dqkv is overwritten. Scores are recomputed one head at a time from qkv and lse. */
    void attentionBackward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads,
                           int kvHeads, int hd);

    // ---- attention in blocks (context parallelism: ring and all-gather attention) ----
    // Queries are rows of `q` (query head h at columns [h hd, (h+1) hd), row pitch qld); keys and values are rows
    // of `kv` (key head g at columns [g hd, ..), value head g at [(kvHeads + g) hd, ..), row pitch kvld), so the q
    // part of a packed QKV tensor and its k|v part (a view starting at column heads*hd) serve directly, as do
    // packed [k | v] blocks received from other ranks. Which rows take part, and the causal mask, are the block's
    // (AttentionBlock). `out` is [batch * qSeq, heads * hd] and `lse` [batch, heads, qSeq].

    /**
     * Softmax attention of the block's query rows against its key/value rows under its mask: writes those query
     * rows of {@code out} and their log-sum-exp (natural log of the sum of exponentials of the scaled scores) in
     * {@code lse}; other rows are untouched. Scores are {@code q . k / sqrt(hd)}.
     */
    void attentionBlockForward(Tensor out, Tensor lse, Tensor q, int qld, Tensor kv, int kvld, AttentionBlock blk);

    /**
     * The block's part of the attention gradient, given the final (merged) {@code out} and {@code lse} of the query
     * rows (flash attention's backward: each block's probabilities are {@code exp(score - lse)}, so the merge needs
     * no backward of its own): {@code dq} (rows of the block, pitch dqld) and {@code dkv} (rows of the key/value
     * block, [dk | dv] as kv, pitch dkvld) are ACCUMULATED.
     */
    void attentionBlockBackward(Tensor dq, int dqld, Tensor dkv, int dkvld, Tensor dout, Tensor out, Tensor lse, Tensor q,
                                int qld, Tensor kv, int kvld, AttentionBlock blk);

    /**
     * Merges a partial result into an accumulated one for the block's query rows (online softmax): {@code lse' =
     * log(exp(lse) + exp(partLse))}, {@code out' = out exp(lse - lse') + partOut exp(partLse - lse')}; a side
     * whose lse is {@code -inf} (no visible key) contributes nothing. Only the query-side fields of {@code blk}
     * are read; {@code partOut}/{@code partLse} are shaped as {@code out}/{@code lse}.
     */
    void attentionMerge(Tensor out, Tensor lse, Tensor partOut, Tensor partLse, AttentionBlock blk);

    // ---- softmax cross-entropy over a vocabulary that may be split across ranks ----
    // One rank's logits are [rows, ld]; its columns are ids [vocabStart, vocabStart + ld) of which the first
    // `valid` are real (the rest vocabulary padding). Per row: max (then all-reduce MAX across the split),
    // sums (then all-reduce SUM), finish. Unsplit: vocabStart 0, and the calls follow one another.

    /** {@code max[r]} = the max of row r's valid columns ({@code -inf} when {@code valid} is 0). */
    void crossEntropyMax(Tensor logits, Tensor max, int rows, int valid, int ld);

    /**
     * {@code sums[2r] = sum_j exp(z[r, j] - max[r])} over valid columns, {@code sums[2r + 1]} = the target's
     * logit where this rank holds the target, else 0. With {@code storeExp} the exponentials replace the
     * logits (the backward's starting point). Targets outside [0, vocab) are refused naming row and id.
     */
    void crossEntropySums(Tensor logits, Tensor max, Tensor sums, Tensor targets, int vocabStart, int vocab, int rows,
                          int valid, int ld, boolean storeExp);

    /**
     * {@code losses[r] = max[r] + log(sums[2r]) - sums[2r + 1]} in nats (max and sums reduced across the
     * split). With {@code backward} (after {@code crossEntropySums(..., storeExp = true)}) the logits become
     * {@code gradScale * (softmax - onehot)} on valid columns and 0 on padding.
     */
    void crossEntropyFinish(Tensor logits, Tensor max, Tensor sums, Tensor losses, Tensor targets, int vocabStart,
                            int rows, int valid, int ld, boolean backward, float gradScale);

    /**
     * The unsplit cross-entropy (one rank holds the whole vocabulary, {@code vocabStart} 0): max, sums (storing
     * the exponentials when {@code backward}) and finish, with the same results as the three calls in turn. A
     * device may fuse them row by row (the CPU does: a row of logits is read from memory once instead of three
     * times); this default makes the three calls.
     */
    default void crossEntropy(Tensor logits, Tensor max, Tensor sums, Tensor losses, Tensor targets, int vocab, int rows,
                              int valid, int ld, boolean backward, float gradScale) {
        crossEntropyMax(logits, max, rows, valid, ld);
        crossEntropySums(logits, max, sums, targets, 0, vocab, rows, valid, ld, backward);
        crossEntropyFinish(logits, max, sums, losses, targets, 0, rows, valid, ld, backward, gradScale);
    }

    // ---- optimizer and gradient utilities over flat fp32 blocks ----

    /**
     * AdamW on elements [from, from + count) of the flat parameter block and its gradient and moment blocks:
     * {@code m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p = p * decay - stepSize * m / (sqrt(v) * invSqrtBc2 + eps)},
     * with {@code decay = 1 - lr wd} (or 1), {@code stepSize = lr / (1 - b1^t)}, {@code invSqrtBc2 = 1 / sqrt(1 - b2^t)}.
     * Flat blocks may hold more than 2^31 elements.
     */
    void adamw(Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float beta1, float beta2,
               float eps, float decay, float stepSize, float invSqrtBc2);

    /**
     * {@link #adamw} on the gradients multiplied by {@code gradScale} (global-norm clipping folded into the update):
     * {@code grads[from, from + count)} are first multiplied by {@code gradScale} in place, with the bits
     * {@link #scale} gives, then the update reads them. A device may fuse the two passes (the CPU does: one read
     * and write of the gradients fewer a step); the default runs the two kernels. {@code gradScale} 1 is exactly
     * {@link #adamw}.
     */
    default void adamwScaled(Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float gradScale,
                             float beta1, float beta2, float eps, float decay, float stepSize, float invSqrtBc2) {
        if (gradScale != 1f) {
            scale(grads.slice(from, count), gradScale);
        }
        adamw(params, grads, m, v, from, count, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
    }

    /** {@code acc[slot] += sum of x^2} over all of {@code x} (F32), accumulated in double; {@code acc} is F64. */
    void sumOfSquares(Tensor x, Tensor acc, int slot);

    /** {@code acc[slot] += scale * sum of x[0, count)} (F32), accumulated in double; {@code acc} is F64. */
    void sum(Tensor x, long count, Tensor acc, int slot, double scale);

    /** x *= factor (F32). */
    void scale(Tensor x, float factor);

    /** x = value (F32). */
    void fill(Tensor x, float value);

    /** All bytes of x = 0 (any dtype). */
    void zero(Tensor x);

    // ---- elementwise pieces of the layers that used to be host loops ----

    /** {@code out[r, :] += bias} for r in [0, rows) (a row-parallel layer's bias, added after its reduction). */
    void addBias(Tensor out, Tensor bias, int rows, int cols);

    /**
     * Dropout in place on a block of {@code rows} rows of a {@code [*, cols]} tensor whose first row is global
     * row {@code firstRow}: element (i, j) is kept, and scaled by {@code 1/(1-p)} computed in float, when
     * {@link org.sparkatron.parallel.DropoutRng#keep(long, long, float)} of ({@code base},
     * {@code (firstRow + i) * cols + j}) says so, else set to 0. The mask is a pure function of its
     * arguments, so every device drops the same elements, and the backward is the same call on the gradient.
     */
    void dropout(Tensor x, float p, long base, long firstRow, int rows, int cols);

    /**
     * {@code dst[0, count) = src[0, count)} rounded to nearest-even in {@code format} (BF16 or F16), in
     * place when dst is src. {@code dst} is of dtype {@code format}, or F32 holding the rounded values (how
     * the CPU device emulates 16-bit storage).
     */
    void round(Tensor dst, Tensor src, long count, DType format);

    /**
     * {@code dst[0, count) = src[0, count)}: 16-bit values (BF16 or F16 elements) widened exactly into F32
     * elements, the inverse of {@link #round} into a 16-bit tensor. The model's 16-bit weights are widened so,
     * one layer at a time, into the fp32 buffer its kernels read (docs/precision.md).
     */
    void widen(Tensor dst, Tensor src, long count);

    // ---- mixture of experts (docs/moe.md): a kernel set of its own, as Megatron keeps its token dispatcher apart
    // from the dense layers; reached through moe() and run in the same stream order as these kernels ----

    /**
     * Whether this kernel set has the mixture-of-experts kernels of {@link #moe()}. A {@code Transformer} with
     * experts refuses a device whose kernels lack them before allocating anything.
     */
    default boolean hasMoeKernels() {
        return false;
    }

    /**
     * This kernel set's mixture-of-experts kernels: one instance per kernel set (the same on every call), whose
     * calls join this set's stream order (see the class comment) and which wrappers of this set wrap too, so a
     * profile, a rounding emulation or a strict device sees every MoE call. Same thread as this set.
     *
     * @throws UnsupportedOperationException where {@link #hasMoeKernels()} is false, naming the kernel set
     */
    default MoeKernels moe() {
        throw new UnsupportedOperationException(getClass().getSimpleName() + " has no mixture-of-experts kernels");
    }

    // ---- FP8 (docs/precision.md): per-tensor scaled E4M3/E5M2 GEMM operands, Transformer Engine's recipes ----
    // A device whose kernels lack them says so through supportsFp8(), and a model in precision fp8 is refused on it
    // before anything is allocated; the defaults below then throw, naming the kernel.
    // Recipe state is F32 device memory: amax [slots] (or the amax history [len, slots], whose row 0 collects the
    // current pass's amaxes), scale [slots] and scaleInv [slots]. An FP8 operand holds codes of dtype FP8_E4M3 /
    // FP8_E5M2, or (the CPU device's emulation, as for 16-bit storage) F32 holding each code's value exactly; its
    // real value is that times scaleInv[slot].

    /** Whether these kernels implement the FP8 kernels below (the CPU kernels do). */
    default boolean supportsFp8() {
        return false;
    }

    /** {@code amax[slot] = max(amax[slot], max |x[0, count)|)} (F32; NaN elements are ignored, as fmaxf does). */
    default void amax(Tensor x, long count, Tensor amax, int slot) {
        throw noFp8("amax");
    }

    private UnsupportedOperationException noFp8(String kernel) {
        return new UnsupportedOperationException(getClass().getSimpleName() + " has no FP8 kernels (" + kernel + ")");
    }

    /**
     * {@code dst[i]} = the FP8 code of {@code src[i] * scale[slot]} (the product in fp32), rounded to nearest even
     * and saturated to the format's largest finite value ({@link Fp8Format#encode}).
     * {@code dst} is of the format's dtype, or F32 receiving the codes' values. With {@code amaxOut} non-null, also
     * {@code amaxOut[amaxSlot] = max(amaxOut[amaxSlot], max |src|)} (the fused amax of delayed scaling).
     */
    default void castToFp8(Tensor dst, Tensor src, long count, Fp8Format format, Tensor scale, int slot,
                   Tensor amaxOut, int amaxSlot) {
        throw noFp8("castToFp8");
    }

    /**
     * Current (per-tensor) scaling, slots [from, from + count): {@code scale = fp8Max / amax} in fp32 (1 where
     * amax is 0, infinite or NaN; {@code Float.MAX_VALUE} where the quotient overflows), {@code scaleInv = 1/scale}:
     * Transformer Engine's {@code compute_scale_from_amax} without epsilon or power-of-two rounding.
     */
    default void fp8ScaleFromAmax(Tensor amax, Tensor scale, Tensor scaleInv, int from, int count, float fp8Max) {
        throw noFp8("fp8ScaleFromAmax");
    }

    /**
     * Delayed scaling, slots [from, from + count) of an amax history {@code [len, slots]} whose row 0 holds this
     * pass's (reduced) amaxes, as Transformer Engine's {@code amax_and_scale_update_after_reduction}: where the
     * current amax is non-zero the history rolls (the current amax becomes the newest entry, the oldest drops,
     * row 0 is zeroed for the next pass) and amax = the maximum over the window ({@code useMax}) or the current
     * amax; {@code scale = scaledMax / amax} if that amax is finite and positive, else unchanged;
     * {@code Float.MAX_VALUE} if the quotient overflows; {@code scaleInv = 1/scale}.
     * {@code scaledMax} is {@code fp8Max * 2^-margin}.
     */
    default void fp8DelayedScaling(Tensor history, Tensor scale, Tensor scaleInv, int len, int slots, int from, int count,
                           boolean useMax, float scaledMax) {
        throw noFp8("fp8DelayedScaling");
    }

    /**
     * FP8 GEMM of a linear layer: {@code out[N,O] = scaleInv[xSlot] * scaleInv[wSlot] * (x8[N,I] w8[O,I]^T) + b[O]},
     * accumulated in fp32 (cuBLASLt FP8 with per-tensor scale pointers and a bias epilogue).
     */
    default void fp8LinearForward(Tensor out, Tensor x8, Tensor w8, Tensor scaleInv, int xSlot, int wSlot, Tensor bias, int n,
                          int in, int outF) {
        throw noFp8("fp8LinearForward");
    }

    /**
     * The backward of {@link #fp8LinearForward}: {@code dx[N,I] = sInv[dySlot] sInv[wSlot] (dy8 w8)} (overwritten, or
     * accumulated when accumulateDx; dx may be null), {@code dw += sInv[dySlot] sInv[xSlot] (dy8^T x8)} in fp32, and
     * {@code db += sum of dout} over rows from the unquantised gradient {@code dout} (Transformer Engine's bgrad).
     */
    default void fp8LinearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor dy8, Tensor x8,
                           Tensor w8, Tensor scaleInv, int dySlot, int xSlot, int wSlot, int n, int in, int outF) {
        throw noFp8("fp8LinearBackward");
    }
}
