package org.sparkatron.inference;

import java.util.Arrays;
import java.util.SplittableRandom;
import org.sparkatron.model.Transformer;

/**
 * Autoregressive generation with a {@link Transformer}: each new token comes from the logits of the last
 * position ({@link Transformer#logits}) over the most recent {@code maxPositions} tokens, chosen by a
 * {@link Sampling}. Seeded: the same model, prompt, options and seed give the same tokens on every run and
 * machine (one {@link SplittableRandom} draw per sampled token). No KV cache: every step recomputes the window,
 * fine for the small models and short continuations this serves.
 *
 * <p>Threading: uses the model, so one thread per model. Failure: a prompt id outside the vocabulary or an
 * empty prompt is refused with IllegalArgumentException.
 */
public final class Generator {
    private Generator() {
    }

    /**
     * Up to {@code maxNewTokens} tokens after {@code prompt}; generation stops early after producing
     * {@code stopToken} (which is not included), unless {@code stopToken} is negative.
     */
    public static int[] generate(Transformer model, int[] prompt, int maxNewTokens, Sampling sampling, long seed, int stopToken) {
        int vocab = model.config().vocabSize();
        int ctx = model.config().maxPositions();
        if (prompt.length == 0) {
            throw new IllegalArgumentException("the prompt is empty: generation needs at least one token");
        }
        if (maxNewTokens < 0) {
            throw new IllegalArgumentException("max new tokens must be >= 0, got " + maxNewTokens);
        }
        for (int id : prompt) {
            if (id < 0 || id >= vocab) {
                throw new IllegalArgumentException("prompt token id " + id + " is outside the vocabulary [0, " + vocab + ")");
            }
        }
        SplittableRandom rng = new SplittableRandom(seed);
        int[] seq = Arrays.copyOf(prompt, prompt.length + maxNewTokens);
        int produced = 0;
        for (int k = 0; k < maxNewTokens; k++) {
            int len = prompt.length + k;
            int t = Math.min(ctx, len);
            int[] window = new int[t + 1]; // the last slot is a dummy target, unused by logits
            System.arraycopy(seq, len - t, window, 0, t);
            float[] logits = model.logits(window, 1, t);
            int next = next(logits, (t - 1) * vocab, vocab, sampling, rng);
            if (next == stopToken) {
                break;
            }
            seq[len] = next;
            produced++;
        }
        return Arrays.copyOfRange(seq, prompt.length, prompt.length + produced);
    }

    /** The next token from {@code logits[offset, offset + vocab)}. */
    public static int next(float[] logits, int offset, int vocab, Sampling s, SplittableRandom rng) {
        if (s.isGreedy()) {
            int best = 0;
            for (int v = 1; v < vocab; v++) {
                if (logits[offset + v] > logits[offset + best]) {
                    best = v;
                }
            }
            return best;
        }
        // tokens by falling logit (ties by id, so the order is deterministic)
        Integer[] order = new Integer[vocab];
        for (int v = 0; v < vocab; v++) {
            order[v] = v;
        }
        Arrays.sort(order, (a, b) -> {
            int c = Float.compare(logits[offset + b], logits[offset + a]);
            return c != 0 ? c : Integer.compare(a, b);
        });
        int keep = s.topK() > 0 ? Math.min(s.topK(), vocab) : vocab;
        double max = logits[offset + order[0]] / s.temperature();
        double[] p = new double[keep];
        double sum = 0;
        for (int i = 0; i < keep; i++) {
            p[i] = Math.exp(logits[offset + order[i]] / s.temperature() - max);
            sum += p[i];
        }
        if (s.topP() < 1) { // the smallest prefix whose probability reaches topP
            double cum = 0;
            int n = 0;
            while (n < keep) {
                cum += p[n] / sum;
                n++;
                if (cum >= s.topP()) {
                    break;
                }
            }
            keep = n;
            sum = 0;
            for (int i = 0; i < keep; i++) {
                sum += p[i];
            }
        }
        double u = rng.nextDouble() * sum;
        for (int i = 0; i < keep; i++) {
            u -= p[i];
            if (u < 0) {
                return order[i];
            }
        }
        return order[keep - 1]; // rounding left u at the end of the last interval
    }
}
