package org.sparkatron.data.gpt;

import java.io.IOException;
import java.util.Arrays;
import org.sparkatron.data.indexed.IndexedDataset;

/**
 * Megatron's {@code GPTDataset} over one split of an {@link IndexedDataset}: documents packed into
 * samples of {@code seq_len + 1} tokens across document boundaries, in the order the seeded
 * {@link GptIndices} give. Sample {@code i} is the one Megatron's {@code dataset[i]} returns.
 *
 * <p>Threading: immutable; concurrent {@link #sample} calls are safe. Blocking: reads the indexed
 * dataset (a mapping locally, ranged reads remotely).
 */
public final class GptDataset implements SampleDataset {
    private final IndexedDataset data;
    private final GptConfig cfg;
    private final GptIndices indices;
    private final Long requestedSamples;

    /**
     * @param documents  the split's document ids (see {@link Splits#documents})
     * @param numSamples samples requested (epochs are added until there are enough), or null for one epoch
     */
    public GptDataset(IndexedDataset data, int[] documents, Long numSamples, GptConfig cfg, boolean dropLastPartial) {
        this.data = data;
        this.cfg = cfg;
        this.requestedSamples = numSamples;
        this.indices = GptIndices.build(data.sequenceLengths(), documents, cfg, numSamples, dropLastPartial);
    }

    /** All documents, one epoch unless {@code numSamples} asks for more, last partial sample dropped. */
    public static GptDataset of(IndexedDataset data, Long numSamples, GptConfig cfg) {
        int[] docs = new int[data.sequenceCount()];
        Arrays.setAll(docs, i -> i);
        return new GptDataset(data, docs, numSamples, cfg, true);
    }

    public GptIndices indices() {
        return indices;
    }

    public Long requestedSamples() {
        return requestedSamples;
    }

    @Override
    public long length() {
        return indices.samples();
    }

    @Override
    public int sampleLength() {
        return cfg.sampleLength();
    }

    @Override
    public void sample(long idx, int[] out, int off) throws IOException {
        if (idx < 0 || idx >= length()) {
            throw new IndexOutOfBoundsException("sample " + idx + " of " + length() + " in " + data.prefix());
        }
        int s = indices.shuffleIndex[(int) idx];
        int begDoc = indices.sampleIndex[2 * s];
        int begOff = indices.sampleIndex[2 * s + 1];
        int endDoc = indices.sampleIndex[2 * s + 2];
        int endOff = indices.sampleIndex[2 * s + 3];
        int extra = cfg.addExtraToken();
        int n = 0;
        if (begDoc == endDoc) {
            int len = endOff - begOff + extra;
            data.read(indices.documentIndex[begDoc], begOff, len, out, off);
            n = len;
        } else {
            for (int i = begDoc; i <= endDoc; i++) {
                int doc = indices.documentIndex[i];
                int from = i > begDoc ? 0 : begOff;
                int to = i < endDoc ? data.sequenceLength(doc) : endOff + extra;
                data.read(doc, from, to - from, out, off + n);
                n += to - from;
            }
        }
        // Only a kept partial last sample is short; Megatron pads it with the pad token.
        Arrays.fill(out, off + n, off + cfg.sampleLength(), cfg.padId());
    }

    /** The document ids sample {@code idx} draws from (Megatron's {@code return_document_ids}). */
    public int[] documentIds(long idx) {
        int s = indices.shuffleIndex[(int) idx];
        int beg = indices.sampleIndex[2 * s];
        int end = indices.sampleIndex[2 * s + 2];
        int[] ids = new int[end - beg + 1];
        for (int i = beg; i <= end; i++) {
            ids[i - beg] = indices.documentIndex[i];
        }
        return ids;
    }
}
