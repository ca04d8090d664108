package org.sparkatron.device;

/**
 * How a mixture-of-experts router turns its logits into the k routing weights of a token (a kernel argument):
 * {@code sigmoid} scores (DeepSeek-V3) or softmax scores over all experts (Mixtral); the top k of them,
 * divided by their sum when {@code normTopK} (for softmax that is Mixtral's renormalisation, equal to
 * Megatron's softmax over the top-k logits), times {@code scale}. Immutable.
 */
public record MoeRouting(boolean sigmoid, boolean normTopK, float scale) {
}
