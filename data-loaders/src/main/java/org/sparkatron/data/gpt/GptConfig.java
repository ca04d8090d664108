package org.sparkatron.data.gpt;

/**
 * The parts of Megatron's {@code GPTDatasetConfig} that decide which tokens a sample holds.
 *
 * @param sequenceLength tokens a model sees per sample (a sample holds {@code sequenceLength + addExtraToken})
 * @param seed           the NumPy seed of every shuffle ({@code random_seed})
 * @param addExtraToken  1 as in Megatron's default ({@code add_extra_token_to_sequence}): inputs and
 *                       targets are both {@code sequenceLength} long; 0 for none
 * @param padId          the token that fills a short last sample when the last partial sequence is kept
 */
public record GptConfig(int sequenceLength, long seed, int addExtraToken, int padId) {
    public GptConfig {
        if (sequenceLength < 2) {
            throw new IllegalArgumentException("sequence length must be at least 2, got " + sequenceLength);
        }
        if (addExtraToken != 0 && addExtraToken != 1) {
            throw new IllegalArgumentException("addExtraToken must be 0 or 1, got " + addExtraToken);
        }
    }

    /**
     * Megatron's defaults: one extra token, pad id -1 (its {@code _PAD_TOKEN_ID} when the tokenizer has
     * no pad token; only used when a last partial sample is kept).
     */
    public static GptConfig of(int sequenceLength, long seed) {
        return new GptConfig(sequenceLength, seed, 1, -1);
    }

    public int sampleLength() {
        return sequenceLength + addExtraToken;
    }
}
