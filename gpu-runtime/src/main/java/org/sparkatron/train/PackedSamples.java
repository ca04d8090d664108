package org.sparkatron.train;

import java.util.List;
import java.util.SplittableRandom;

/**
 * Fixed-length training samples cut from a list of token sequences. {@link #packed} does what Megatron's
 * GPT dataset does: the sequences are concatenated into one stream and sample {@code i} is tokens
 * {@code [i*T, i*T + T + 1)}, so consecutive samples share one boundary token and documents flow across
 * sample boundaries. {@link #perSequence} takes sequences that already have {@code T + 1} tokens each
 * as one sample each. Samples are visited in a seeded random order, reshuffled each epoch, repeating the
 * data as many epochs as the caller reads. Deterministic in the seed; {@link #skip} resumes exactly.
 */
public final class PackedSamples implements SampleSource {
    private final int[] stream;
    private final int seqLen;
    private final int stride;
    private final int count;
    private final long seed;
    private int[] order;
    private long consumed;
    private long epochOfOrder = -1;

    /** Megatron-style packing of all sequences into samples of {@code seqLen + 1} tokens. */
    public static PackedSamples packed(List<int[]> sequences, int seqLen, long seed) {
        return new PackedSamples(sequences, seqLen, seqLen, seed);
    }

    /** Each sequence is one sample; all must have the same length (at least 2). */
    public static PackedSamples perSequence(List<int[]> sequences, long seed) {
        int len = sequences.get(0).length;
        for (int i = 0; i < sequences.size(); i++) {
            if (sequences.get(i).length != len) {
                throw new IllegalArgumentException("sequence " + (i + 1) + " has " + sequences.get(i).length
                        + " tokens, the first has " + len + ": per-sequence samples must all be the same length");
            }
        }
        if (len < 2) {
            throw new IllegalArgumentException("sequences of " + len + " token(s) have no next-token target");
        }
        return new PackedSamples(sequences, len - 1, len, seed);
    }

    private PackedSamples(List<int[]> sequences, int seqLen, int stride, long seed) {
        if (seqLen < 1) {
            throw new IllegalArgumentException("sequence length must be >= 1, got " + seqLen);
        }
        long total = 0;
        for (int[] s : sequences) {
            total += s.length;
        }
        if (total < seqLen + 1L) {
            throw new IllegalArgumentException("the data has " + total + " tokens, fewer than one sample of "
                    + (seqLen + 1) + " (sequence length + 1)");
        }
        this.stream = new int[Math.toIntExact(total)];
        int at = 0;
        for (int[] s : sequences) {
            System.arraycopy(s, 0, stream, at, s.length);
            at += s.length;
        }
        this.seqLen = seqLen;
        this.stride = stride;
        this.count = (int) ((total - seqLen - 1) / stride + 1);
        this.seed = seed;
    }

    /** Number of distinct samples in one epoch. */
    public int samplesPerEpoch() {
        return count;
    }

    @Override
    public int sampleLength() {
        return seqLen + 1;
    }

    @Override
    public boolean next(int[] out, int offset) {
        long epoch = consumed / count;
        if (epoch != epochOfOrder) {
            order = permutation(count, seed + epoch * 0x9E3779B97F4A7C15L);
            epochOfOrder = epoch;
        }
        int sample = order[(int) (consumed % count)];
        System.arraycopy(stream, sample * stride, out, offset, seqLen + 1);
        consumed++;
        return true;
    }

    @Override
    public long consumed() {
        return consumed;
    }

    @Override
    public void skip(long n) {
        consumed += n;
    }

    /** Fisher-Yates shuffle of 0..n-1 with a seeded generator: the same order on every JVM for a seed. */
    public static int[] permutation(int n, long seed) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) {
            p[i] = i;
        }
        SplittableRandom rng = new SplittableRandom(seed);
        for (int i = n - 1; i > 0; i--) {
            int j = rng.nextInt(i + 1);
            int tmp = p[i];
            p[i] = p[j];
            p[j] = tmp;
        }
        return p;
    }
}
