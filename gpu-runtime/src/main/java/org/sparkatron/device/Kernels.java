package org.sparkatron.device;

import org.sparkatron.tensor.Tensor;

/**
 * The kernel set a transformer rank needs, each a forward and a backward with matching arguments
 * (llm.c style). Activations are row-major {@code [N, C]} with {@code N = B * T} rows (token-major).
 *
 * <p>Conventions: backward kernels ACCUMULATE into parameter gradients ({@code dw += ...}, so gradient
 * accumulation over micro-batches is free) and into {@code dx} where the name says {@code Accumulate};
 * otherwise they overwrite. An instance belongs to one rank and owns that rank's scratch memory: it is
 * not thread-safe; all calls block until the result is in memory.
 */
public interface Kernels {
    // ---- GEMM-backed linear layer: out[N,O] = x[N,I] * w[O,I]^T + b[O] ----

    void linearForward(Tensor out, Tensor x, Tensor w, Tensor bias, int n, int in, int outF);

    /** dx[N,I] = dout * w (overwritten, or accumulated when accumulateDx); dw += dout^T x; db += sum dout. */
    void linearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor x, Tensor w,
                        int n, int in, int outF);

    // ---- embeddings: out[n] = wte[tok[n]] (+ wpe[n % T]) ----

    void embeddingForward(Tensor out, Tensor tokens, Tensor wte, Tensor wpe, int n, int t, int c);

    void embeddingBackward(Tensor dwte, Tensor dwpe, Tensor dout, Tensor tokens, int n, int t, int c);

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
     * convention; {@code cos}/{@code sin} are [maxPos, hd/2] tables, position of row n is n % T.
     * {@code inverse} applies the transpose (the backward).
     */
    void rope(Tensor qkv, Tensor cos, Tensor sin, int b, int t, int heads, int kvHeads, int hd, boolean inverse);

    /** Causal softmax attention; {@code lse} [B, H, T] keeps each row's log-sum-exp for backward. */
    void attentionForward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd);

    /** dqkv is overwritten. Scores are recomputed one head at a time from qkv and lse. */
    void attentionBackward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads,
                           int kvHeads, int hd);

    // ---- loss ----

    /**
     * Softmax cross-entropy over rows of {@code logits [rows, vPadded]}, in place: on return the logits hold
     * {@code gradScale * (softmax - onehot)} (zero in padded columns [v, vPadded)), and {@code losses[r]}
     * the row's loss in nats. Targets must be in [0, v).
     */
    void crossEntropyForwardBackward(Tensor logits, Tensor losses, Tensor targets, int rows, int v, int vPadded,
                                     float gradScale);

    /** Loss only; logits are left unchanged. */
    void crossEntropyForward(Tensor logits, Tensor losses, Tensor targets, int rows, int v, int vPadded);

    // ---- optimizer and gradient utilities over flat fp32 blocks ----

    /**
     * AdamW on elements [from, from + count) of the flat parameter block and its gradient and moment blocks:
     * {@code m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p = p * decay - stepSize * m / (sqrt(v) * invSqrtBc2 + eps)},
     * with {@code decay = 1 - lr wd} (or 1), {@code stepSize = lr / (1 - b1^t)}, {@code invSqrtBc2 = 1 / sqrt(1 - b2^t)}.
     */
    void adamw(Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float beta1, float beta2,
               float eps, float decay, float stepSize, float invSqrtBc2);

    /** Sum of squares of all elements, accumulated in (at least partly) double precision. */
    double sumOfSquares(Tensor x);

    /** x *= factor. */
    void scale(Tensor x, float factor);

    /** x = value. */
    void fill(Tensor x, float value);
}
