package org.sparkatron.data.gpt;

/**
 * Megatron's left-to-right masks for one packed sample (gpt_dataset.py
 * {@code _get_ltor_masks_and_position_ids} plus the pad-label rule of {@code __getitem__}): inputs are
 * tokens {@code [0, T)}, labels tokens {@code [1, T+1)}.
 *
 * <ul>
 *   <li>{@code positionIds}: 0..T-1, restarting after each end-of-document token when
 *       {@code resetPositionIds};</li>
 *   <li>{@code lossMask}: 1, 0 where the input is end-of-document when {@code eodMaskLoss}, and 0 where
 *       the label is the pad token (a kept partial last sample);</li>
 *   <li>{@code segmentIds}: with {@code resetAttentionMask}, the document each input position belongs to
 *       (a new one starts after each end-of-document token); token {@code i} may attend to token
 *       {@code j} iff {@code j <= i} and both have the same segment. Without it all are 0 (plain causal).
 *       This is the compact form of Megatron's {@code [T, T]} boolean mask; {@link #attends} expands it.</li>
 * </ul>
 * Immutable value; stateless factory.
 */
public record SampleMasks(int[] inputs, int[] labels, int[] positionIds, float[] lossMask, int[] segmentIds) {

    public static SampleMasks of(int[] sample, int eodId, int padId, boolean resetPositionIds,
                                 boolean resetAttentionMask, boolean eodMaskLoss) {
        int t = sample.length - 1;
        int[] inputs = java.util.Arrays.copyOfRange(sample, 0, t);
        int[] labels = java.util.Arrays.copyOfRange(sample, 1, t + 1);
        int[] pos = new int[t];
        float[] loss = new float[t];
        int[] seg = new int[t];
        int prev = 0;
        int segment = 0;
        for (int i = 0; i < t; i++) {
            pos[i] = resetPositionIds ? i - prev : i;
            seg[i] = resetAttentionMask ? segment : 0;
            loss[i] = (eodMaskLoss && inputs[i] == eodId) || labels[i] == padId ? 0f : 1f;
            if (inputs[i] == eodId) {
                prev = i + 1;
                segment++;
            }
        }
        return new SampleMasks(inputs, labels, pos, loss, seg);
    }

    /** Whether position {@code i} may attend to position {@code j}. */
    public boolean attends(int i, int j) {
        return j <= i && segmentIds[i] == segmentIds[j];
    }
}
