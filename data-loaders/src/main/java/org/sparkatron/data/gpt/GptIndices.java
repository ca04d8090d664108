package org.sparkatron.data.gpt;

import java.nio.IntBuffer;

/**
 * Megatron's three indices for a GPT dataset (gpt_dataset.py, {@code _build_document_sample_shuffle_indices},
 * and helpers.cpp {@code build_sample_idx}), built from the same inputs with the same arithmetic:
 *
 * <ul>
 *   <li><b>document index</b>: the split's document ids repeated once per epoch, shuffled by the seed
 *       (the final epoch shuffled separately when it contributes under 80% of an epoch's samples);</li>
 *   <li><b>sample index</b>: {@code (position in the document index, token offset)} where each packed
 *       sample of {@code seq_len + 1} tokens starts; consecutive samples share one boundary token;</li>
 *   <li><b>shuffle index</b>: a seeded permutation of the samples (again with the final epoch apart).</li>
 * </ul>
 * Enough epochs are taken for the requested number of samples. With the same seed the three arrays
 * equal Megatron's element for element (NumPy's RandomState is reproduced by {@link NumpyRandomState}).
 *
 * <p>Immutable once built; safe to share between threads.
 */
public final class GptIndices {
    /** Document ids in sample order, per epoch. */
    public final int[] documentIndex;
    /** Pairs {@code (documentIndex position, offset)}, {@code samples + 1} of them, flattened. */
    public final int[] sampleIndex;
    /** Permutation of {@code [0, samples)}. */
    public final int[] shuffleIndex;
    public final int epochs;
    public final long tokensPerEpoch;
    public final boolean separateFinalEpoch;

    private GptIndices(int[] documentIndex, int[] sampleIndex, int[] shuffleIndex, int epochs, long tokensPerEpoch,
                       boolean separateFinalEpoch) {
        this.documentIndex = documentIndex;
        this.sampleIndex = sampleIndex;
        this.shuffleIndex = shuffleIndex;
        this.epochs = epochs;
        this.tokensPerEpoch = tokensPerEpoch;
        this.separateFinalEpoch = separateFinalEpoch;
    }

    /** Number of samples (Megatron's {@code len(dataset)}). */
    public int samples() {
        return sampleIndex.length / 2 - 1;
    }

    /**
     * Builds the indices.
     *
     * @param sequenceLengths tokens per document of the whole indexed dataset
     * @param documents       the split's document ids (Megatron's {@code indices})
     * @param numSamples      samples requested, or null for exactly one epoch
     * @param dropLastPartial false keeps a last, padded partial sample (Megatron does so only for
     *                        validation when {@code drop_last_partial_validation_sequence} is false)
     */
    public static GptIndices build(IntBuffer sequenceLengths, int[] documents, GptConfig cfg, Long numSamples,
                                   boolean dropLastPartial) {
        int seqLen = cfg.sequenceLength();
        int extra = cfg.addExtraToken();
        long tokensPerEpoch = 0;
        for (int d : documents) {
            tokensPerEpoch += sequenceLengths.get(d);
        }
        if (tokensPerEpoch <= 1) {
            throw new IllegalArgumentException("the split holds " + tokensPerEpoch + " tokens in " + documents.length
                    + " documents; at least 2 are needed to build a sample");
        }
        int epochs = 1;
        if (numSamples != null) {
            if (numSamples < 0) {
                throw new IllegalArgumentException("negative number of samples: " + numSamples);
            }
            long requested = numSamples * seqLen + extra;
            long tokens = tokensPerEpoch;
            while (tokens < requested) {
                epochs++;
                tokens += tokensPerEpoch;
            }
        }
        boolean separateFinal = false;
        long samplesSansFinal = 0;
        if (epochs > 1) {
            samplesSansFinal = ((epochs - 1) * tokensPerEpoch - extra) / seqLen;
            long fromFinal = numSamples - samplesSansFinal;
            long perEpoch = (tokensPerEpoch - extra) / seqLen;
            if (fromFinal < 0 || fromFinal > perEpoch + 1) {
                throw new IllegalStateException("inconsistent epoch arithmetic: " + fromFinal + " samples from the final epoch");
            }
            // Megatron: int(0.80 * num_samples_per_epoch), a truncating float product.
            separateFinal = fromFinal < (long) (0.80 * perEpoch);
        }
        if ((long) epochs * documents.length > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("document index of " + ((long) epochs * documents.length)
                    + " entries is too large; request fewer samples");
        }
        NumpyRandomState rng = new NumpyRandomState(cfg.seed());
        int[] docIndex = buildDocumentIndex(documents, epochs, rng, separateFinal);
        int[] sampleIndex = buildSampleIndex(sequenceLengths, docIndex, seqLen, epochs, tokensPerEpoch, dropLastPartial, extra);
        int total = sampleIndex.length / 2 - 1;
        int[] shuffle = buildShuffleIndex(separateFinal ? (int) samplesSansFinal : total, total, rng);
        return new GptIndices(docIndex, sampleIndex, shuffle, epochs, tokensPerEpoch, separateFinal);
    }

    static int[] buildDocumentIndex(int[] documents, int epochs, NumpyRandomState rng, boolean separateFinal) {
        int n = documents.length;
        int[] out = new int[epochs * n];
        for (int e = 0; e < epochs; e++) {
            System.arraycopy(documents, 0, out, e * n, n);
        }
        if (!separateFinal || epochs == 1) {
            rng.shuffle(out, 0, out.length);
        } else {
            rng.shuffle(out, 0, (epochs - 1) * n);
            rng.shuffle(out, (epochs - 1) * n, out.length);
        }
        return out;
    }

    /** helpers.cpp {@code build_sample_idx}, with the same integer and float arithmetic. */
    static int[] buildSampleIndex(IntBuffer sizes, int[] docIndex, int seqLen, int epochs, long tokensPerEpoch,
                                  boolean dropLast, int extra) {
        long numSamples = dropLast
                ? (epochs * tokensPerEpoch - extra) / seqLen
                : (long) Math.ceil((float) (epochs * tokensPerEpoch - extra) / seqLen);
        if (2 * (numSamples + 1) > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException(numSamples + " samples is too many for one dataset");
        }
        int[] idx = new int[(int) (2 * (numSamples + 1))];
        int sample = 0;
        int docPos = 0;
        long offset = 0;
        idx[0] = 0;
        idx[1] = 0;
        sample++;
        while (sample <= numSamples) {
            long remaining = seqLen + extra;
            while (remaining != 0) {
                long docLength = sizes.get(docIndex[docPos]) - offset;
                remaining -= docLength;
                if (remaining <= 0) {
                    offset += remaining + docLength - extra;
                    remaining = 0;
                } else {
                    if (docPos == docIndex.length - 1) {
                        // The last document ends inside this sample: a partial last sample.
                        offset = sizes.get(docIndex[docPos]) - extra;
                        break;
                    }
                    docPos++;
                    offset = 0;
                }
            }
            idx[2 * sample] = docPos;
            idx[2 * sample + 1] = (int) offset;
            sample++;
        }
        return idx;
    }

    static int[] buildShuffleIndex(int numSamples, int total, NumpyRandomState rng) {
        int[] out = new int[total];
        for (int i = 0; i < total; i++) {
            out[i] = i;
        }
        rng.shuffle(out, 0, numSamples);
        if (numSamples != total) {
            rng.shuffle(out, numSamples, total);
        }
        return out;
    }
}
