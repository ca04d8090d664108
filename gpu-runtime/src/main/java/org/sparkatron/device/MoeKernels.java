package org.sparkatron.device;

import org.sparkatron.tensor.Tensor;

/**
 * The mixture-of-experts kernels of a {@link Kernels} set (docs/moe.md), reached through {@link Kernels#moe()}:
 * routing, the load-balancing losses, capacity, dispatch and combine, chunk reordering for expert parallelism and
 * the grouped GEMMs of the experts. Kept apart from the dense kernels as Megatron keeps its MoE token dispatcher
 * apart from the layers, so a kernel set without experts carries none of it.
 *
 * <p>Shapes: router logits are [n, e]; a token's k choices are [n, k] rows: expert ids (I32, -1 where a capacity
 * limit dropped the assignment) and weights (F32). A dispatch buffer holds token rows grouped by expert; rowMap
 * [n, k] (I32) says where assignment (t, j) went (-1: dropped). Offsets and counts are I32 device tensors: no
 * kernel needs them on the host.
 *
 * <p>Stream order, threading and failure are those of the {@link Kernels} set it belongs to: its calls execute in
 * the order issued together with that set's calls, the device's copies and the rank's communicator operations; a
 * call may return before its result is in memory (the host sees results after {@link Device#synchronize()});
 * nothing here returns a value computed from device memory. Not thread-safe (one rank's thread); kernel scratch
 * belongs to the instance.
 */
public interface MoeKernels {
    /**
     * Top-k routing without an expert bias: {@code experts[t]} = the k highest scores of token t (ties: the lower
     * expert id; in decreasing order of score), {@code probs[t]} their weights ({@link MoeRouting}); {@code scores}
     * (if not null) [n, e] gets the scores the load-balancing loss uses: the softmax over all experts, or for
     * sigmoid scores the sigmoids divided by their sum over all experts.
     */
    default void route(Tensor logits, Tensor experts, Tensor probs, Tensor scores, int n, int e, int k, MoeRouting routing) {
        route(logits, experts, probs, scores, null, n, e, k, routing);
    }

    /**
     * {@link #route(Tensor, Tensor, Tensor, Tensor, int, int, int, MoeRouting)} with an expert bias
     * ({@code bias} [e] F32, null: none; DeepSeek-V3's aux-loss-free balancing): the k experts are those with the
     * highest {@code score + bias} (ties: the lower expert id; in decreasing order of it), their weights the
     * unbiased scores as without a bias.
     */
    void route(Tensor logits, Tensor experts, Tensor probs, Tensor scores, Tensor bias, int n, int e, int k,
               MoeRouting routing);

    /** {@code tally[i] += counts[i]} for i in [0, e): a step's tokens per expert (tally F64, counts I32). */
    void countTokens(Tensor tally, Tensor counts, int e);

    /**
     * The aux-loss-free bias update (Megatron's {@code get_updated_expert_bias}) from a step's global token counts
     * {@code tally} [e] (F64): {@code bias[i] += rate * sign(mean(tally) - tally[i])} (F32; 0 where equal), then
     * {@code tally = 0}.
     */
    void expertBiasUpdate(Tensor bias, Tensor tally, int e, float rate);

    /**
     * Megatron's auxiliary load-balancing loss of one layer without its coefficient,
     * {@code E / (k n^2) * sum_e count_e * sum_t scores[t, e]} ({@code count_e}: assignments to e in
     * {@code experts}, before any capacity drop), added times {@code reportWeight} to {@code acc[slot]} (F64).
     * {@code auxGrad} [e] (F32) gets {@code gradWeight * E / (k n^2) * count_e}: dLoss/dscores[t, e] for every t.
     */
    void auxLoss(Tensor scores, Tensor experts, Tensor auxGrad, Tensor acc, int slot, int n, int e, int k,
                 float gradWeight, double reportWeight);

    /** Router z-loss without its coefficient, {@code mean_t logsumexp(logits[t])^2}, times {@code reportWeight} into acc[slot]. */
    void zLoss(Tensor logits, Tensor acc, int slot, int n, int e, double reportWeight);

    /**
     * Capacity (Megatron's {@code probs} drop policy): of the assignments to each expert keep the
     * {@code capacity} with the highest weight (ties: the lower token), {@code routed} = {@code experts} with
     * -1 and {@code probs} = 0 where dropped; the number dropped times {@code reportWeight} is added to
     * {@code acc[slot]} (F64; acc may be null).
     */
    void capacity(Tensor routed, Tensor probs, Tensor experts, Tensor acc, int slot, int n, int e, int k, int capacity,
                  double reportWeight);

    /**
     * Dispatch: token rows of {@code x} [n, c] into {@code out}, grouped by expert in token order. Packed
     * ({@code capacity} 0): expert g's rows at {@code [sum_{h<g} counts_h, ...)}; padded: at {@code g * capacity},
     * rows past its count zero-filled. Writes {@code rowMap}, {@code counts} [e] (assignments kept per expert)
     * and, if not null, {@code offsets} [e + 1] (where each expert's block starts; the last: its end).
     */
    void permute(Tensor out, Tensor rowMap, Tensor counts, Tensor offsets, Tensor x, Tensor routed, int n, int c, int e,
                 int k, int capacity);

    /** {@code dx[t] += sum_j dperm[rowMap[t, j]]} over kept assignments: the backward of {@link #permute}. */
    void permuteBackward(Tensor dx, Tensor dperm, Tensor rowMap, int n, int c, int k);

    /** Combine: {@code out[t] = sum_j probs[t, j] * y[rowMap[t, j]]} over kept assignments (0 for none). */
    void unpermute(Tensor out, Tensor y, Tensor rowMap, Tensor probs, int n, int c, int k);

    /**
     * Backward of {@link #unpermute}: {@code dy} (its first {@code rows} rows) gets {@code probs[t, j] * dout[t]}
     * at {@code rowMap[t, j]} and 0 elsewhere; {@code dprobs[t, j] = dout[t] . y[rowMap[t, j]]} (0 where dropped).
     */
    void unpermuteBackward(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rowMap, Tensor probs, int rows, int n,
                           int c, int k);

    /**
     * Backward of the router into {@code dlogits} [n, e] (overwritten): through the top-k weights
     * ({@code dprobs}, with {@code experts} the choices before any capacity drop), through the load-balancing
     * scores ({@code auxGrad} [e] from {@link #auxLoss}; null: none) and of {@code zWeight * sum_t lse_t^2}.
     * The scores are recomputed from {@code logits}.
     */
    void routeBackward(Tensor dlogits, Tensor dprobs, Tensor logits, Tensor experts, Tensor auxGrad, float zWeight, int n,
                       int e, int k, MoeRouting routing);

    /**
     * Reorders a dispatch buffer of {@code a x b} row blocks of width {@code c}, block (i, j) holding
     * {@code counts[i b + j]} rows: from i-major order ({@code in}: all of i = 0, then i = 1, ...) to j-major
     * ({@code out}), or back with {@code inverse}. {@code offsets} [b + 1] (may be null) gets where each j's
     * rows start in the j-major order. Expert parallelism uses it between (source rank, local expert) and
     * (local expert, source rank) order.
     */
    void sortChunks(Tensor out, Tensor offsets, Tensor in, Tensor counts, int a, int b, int c, boolean inverse);

    /**
     * Grouped linear layer: for each group g, rows {@code [offsets[g], offsets[g+1])} of {@code out} =
     * those rows of {@code x} [*, in] times {@code w[g]}^T ({@code w} [groups, outF, in]); other rows untouched.
     */
    void groupedLinearForward(Tensor out, Tensor x, Tensor w, Tensor offsets, int groups, int in, int outF);

    /** Backward of {@link #groupedLinearForward}: dx rows of each group overwritten (null: skipped); {@code dw[g] += dout^T x}. */
    void groupedLinearBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets, int groups, int in,
                               int outF);
}
