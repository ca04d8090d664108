package org.sparkatron.train;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

/**
 * A synthetic language with a known answer: a first-order Markov chain over {@code vocab} tokens where
 * each token has {@code successors} possible next tokens with random (seeded) probabilities. A model that
 * learns the chain reaches the chain's entropy rate in loss and {@link #bestAccuracy()} in next-token
 * accuracy, far from chance ({@code 1 / vocab}); the demo uses it to show that learning happened.
 */
public final class MarkovCorpus {
    private final int vocab;
    private final int[][] next;     // [vocab][successors] token ids
    private final double[][] prob;  // [vocab][successors] probabilities

    public MarkovCorpus(int vocab, int successors, long seed) {
        if (successors < 1 || successors > vocab) {
            throw new IllegalArgumentException("successors must be in [1, vocab], got " + successors);
        }
        this.vocab = vocab;
        this.next = new int[vocab][successors];
        this.prob = new double[vocab][successors];
        SplittableRandom rng = new SplittableRandom(seed);
        for (int s = 0; s < vocab; s++) {
            int[] perm = PackedSamples.permutation(vocab, rng.nextLong());
            double sum = 0;
            for (int j = 0; j < successors; j++) {
                next[s][j] = perm[j];
                prob[s][j] = Math.exp(1.5 * rng.nextGaussian());
                sum += prob[s][j];
            }
            for (int j = 0; j < successors; j++) {
                prob[s][j] /= sum;
            }
        }
    }

    public int vocab() {
        return vocab;
    }

    /** {@code count} sequences of {@code length} tokens, each starting at a uniformly random token. */
    public List<int[]> generate(int count, int length, long seed) {
        SplittableRandom rng = new SplittableRandom(seed);
        List<int[]> out = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            int[] seq = new int[length];
            seq[0] = rng.nextInt(vocab);
            for (int p = 1; p < length; p++) {
                seq[p] = sample(seq[p - 1], rng.nextDouble());
            }
            out.add(seq);
        }
        return out;
    }

    private int sample(int state, double u) {
        double acc = 0;
        for (int j = 0; j < next[state].length; j++) {
            acc += prob[state][j];
            if (u < acc) {
                return next[state][j];
            }
        }
        return next[state][next[state].length - 1];
    }

    /** The most likely next token after {@code state}. */
    public int mostLikelyNext(int state) {
        int best = 0;
        for (int j = 1; j < next[state].length; j++) {
            if (prob[state][j] > prob[state][best]) {
                best = j;
            }
        }
        return next[state][best];
    }

    /** Entropy of the next token given the current one, averaged over visited states (nats). */
    public double entropyRate(List<int[]> data) {
        double[] visits = stateFrequencies(data);
        double h = 0;
        for (int s = 0; s < vocab; s++) {
            double hs = 0;
            for (double p : prob[s]) {
                hs -= p > 0 ? p * Math.log(p) : 0;
            }
            h += visits[s] * hs;
        }
        return h;
    }

    /** Accuracy of always predicting the most likely successor, averaged over visited states. */
    public double bestAccuracy(List<int[]> data) {
        double[] visits = stateFrequencies(data);
        double a = 0;
        for (int s = 0; s < vocab; s++) {
            double max = 0;
            for (double p : prob[s]) {
                max = Math.max(max, p);
            }
            a += visits[s] * max;
        }
        return a;
    }

    /** How often each token is the context of a next-token prediction in {@code data}. */
    private double[] stateFrequencies(List<int[]> data) {
        double[] f = new double[vocab];
        long n = 0;
        for (int[] seq : data) {
            for (int p = 0; p + 1 < seq.length; p++) {
                f[seq[p]]++;
                n++;
            }
        }
        for (int s = 0; s < vocab; s++) {
            f[s] /= Math.max(1, n);
        }
        return f;
    }
}
