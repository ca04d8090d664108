package org.sparkatron.device;

/**
 * Which part of an attention computation one call of the block kernels covers
 * ({@link Kernels#attentionBlockForward}, {@link Kernels#attentionBlockBackward}, {@link Kernels#attentionMerge}):
 * a block of query rows against a block of key/value rows of the same {@code batch} sequences, with a causal
 * mask shifted by {@code diagonal}. Context parallelism splits a causal attention into such blocks (ring
 * attention: the query chunks a rank holds against the key/value chunks travelling round the ring;
 * all-gather: each query chunk against the gathered prefix it may see).
 *
 * <p>Rows: query row {@code i} of the block, of sequence {@code s}, is row {@code s * qSeq + qFirst + i} of the
 * query tensor and of the output ({@code [batch * qSeq, heads * headDim]}); its log-sum-exp is element
 * {@code (s * heads + h) * qSeq + qFirst + i} of {@code [batch, heads, qSeq]}. Key/value row {@code j} of the
 * block is row {@code s * kvSeq + kvFirst + j} of the key/value tensor. Query row {@code i} attends key row
 * {@code j} iff {@code j <= i + diagonal}: 0 is the ordinary causal mask of two aligned blocks, a block a
 * query chunk fully follows has {@code diagonal >= kvRows - 1} ({@link #NO_MASK}), and a query chunk starting
 * {@code d} positions after its key/value block has {@code diagonal = d}. A row that sees no key gets
 * output 0 and log-sum-exp {@code -inf}. Grouped-query attention as everywhere: query head {@code h} reads
 * key/value head {@code h / (heads / kvHeads)}.
 *
 * <p>Immutable; validated on construction (sizes non-negative, blocks inside their sequences, heads divisible).
 */
public record AttentionBlock(int batch, int heads, int kvHeads, int headDim, int qSeq, int qFirst, int qRows, int kvSeq,
                             int kvFirst, int kvRows, long diagonal) {
    /** A diagonal no key row exceeds: every query row sees the whole key/value block. */
    public static final long NO_MASK = Integer.MAX_VALUE;

    public AttentionBlock {
        if (batch < 0 || heads < 1 || kvHeads < 1 || headDim < 1 || heads % kvHeads != 0) {
            throw new IllegalArgumentException("attention block: batch " + batch + ", heads " + heads + ", kv heads " + kvHeads
                    + ", head dim " + headDim + " (heads must be a multiple of kv heads)");
        }
        if (qFirst < 0 || qRows < 0 || (long) qFirst + qRows > qSeq || kvFirst < 0 || kvRows < 0
                || (long) kvFirst + kvRows > kvSeq) {
            throw new IllegalArgumentException("attention block: query rows [" + qFirst + ", " + ((long) qFirst + qRows)
                    + ") of " + qSeq + ", key/value rows [" + kvFirst + ", " + ((long) kvFirst + kvRows) + ") of " + kvSeq);
        }
    }

    /** The whole causal attention of sequences of {@code t} tokens as one block (what the unsplit kernels compute). */
    public static AttentionBlock causal(int batch, int t, int heads, int kvHeads, int headDim) {
        return new AttentionBlock(batch, heads, kvHeads, headDim, t, 0, t, t, 0, t, 0);
    }

    /** How many key rows query row {@code i} of the block sees: a prefix of the key block. */
    public int visible(int i) {
        return (int) Math.max(0, Math.min(kvRows, i + diagonal + 1));
    }

    /** Elements per output row (and per query row's head span). */
    public int width() {
        return heads * headDim;
    }
}
