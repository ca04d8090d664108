package org.sparkatron.inference;

/**
 * How the next token is chosen from the model's logits, with Hugging Face {@code generate}'s meaning of each
 * knob: {@code temperature} 0 is greedy (the arg-max; the other knobs are then unused), otherwise logits are
 * divided by it; {@code topK} keeps the k most likely tokens (0: all); {@code topP} keeps the smallest set of
 * most likely tokens whose probabilities sum to at least p (1: all). Immutable and serializable (it travels
 * in Spark task closures).
 */
public record Sampling(double temperature, int topK, double topP) implements java.io.Serializable {
    public Sampling {
        if (!(temperature >= 0) || Double.isInfinite(temperature)) {
            throw new IllegalArgumentException("temperature must be >= 0 (0: greedy), got " + temperature);
        }
        if (topK < 0) {
            throw new IllegalArgumentException("top-k must be >= 0 (0: no limit), got " + topK);
        }
        if (!(topP > 0 && topP <= 1)) {
            throw new IllegalArgumentException("top-p must be in (0, 1], got " + topP);
        }
    }

    /** Arg-max decoding. */
    public static Sampling greedy() {
        return new Sampling(0, 0, 1);
    }

    public boolean isGreedy() {
        return temperature == 0;
    }
}
