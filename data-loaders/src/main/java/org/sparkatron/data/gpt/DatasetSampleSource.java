package org.sparkatron.data.gpt;

import java.io.IOException;
import java.io.UncheckedIOException;
import org.sparkatron.train.SampleSource;

/**
 * A {@link SampleSource} over a {@link SampleDataset}, in the order Megatron's
 * {@code MegatronPretrainingSampler} hands samples to data-parallel ranks: the global sequence is cut
 * into global batches of {@code microBatch * dpSize} samples; rank {@code r} takes samples
 * {@code [r * microBatch, (r + 1) * microBatch)} of each; an incomplete last global batch is dropped.
 * With one rank and micro-batch 1 it is simply samples 0, 1, 2, ...
 *
 * <p>Resume: {@link #skip} is O(1) and lands exactly where a source that read that many samples would
 * be, so a resumed run sees the same samples as one that never stopped. Threading: one thread, as the
 * contract says. Blocking: {@link #next} reads the dataset (remote reads block).
 */
public final class DatasetSampleSource implements SampleSource {
    private final SampleDataset dataset;
    private final int dpRank;
    private final int dpSize;
    private final int microBatch;
    private long consumed;

    public DatasetSampleSource(SampleDataset dataset) {
        this(dataset, 0, 1, 1);
    }

    public DatasetSampleSource(SampleDataset dataset, int dpRank, int dpSize, int microBatch) {
        if (dpSize < 1 || dpRank < 0 || dpRank >= dpSize || microBatch < 1) {
            throw new IllegalArgumentException("bad data-parallel position: rank " + dpRank + " of " + dpSize
                    + ", micro-batch " + microBatch);
        }
        this.dataset = dataset;
        this.dpRank = dpRank;
        this.dpSize = dpSize;
        this.microBatch = microBatch;
    }

    @Override
    public int sampleLength() {
        return dataset.sampleLength();
    }

    /** The global sample index this rank's {@code local}-th sample is. */
    public long globalIndex(long local) {
        long globalBatch = (long) microBatch * dpSize;
        return (local / microBatch) * globalBatch + (long) dpRank * microBatch + (local % microBatch);
    }

    @Override
    public boolean next(int[] out, int offset) {
        long globalBatch = (long) microBatch * dpSize;
        long batchStart = (consumed / microBatch) * globalBatch;
        if (batchStart + globalBatch > dataset.length()) {
            return false;
        }
        try {
            dataset.sample(globalIndex(consumed), out, offset);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        consumed++;
        return true;
    }

    @Override
    public long consumed() {
        return consumed;
    }

    @Override
    public void skip(long n) {
        if (n < 0) {
            throw new IllegalArgumentException("cannot skip " + n + " samples");
        }
        long globalBatch = (long) microBatch * dpSize;
        long available = (dataset.length() / globalBatch) * microBatch;
        if (consumed + n > available) {
            throw new IllegalStateException("source exhausted after " + available + " samples while skipping " + n
                    + " from " + consumed);
        }
        consumed += n;
    }
}
