package org.sparkatron.data.gpt;

import java.io.IOException;

/**
 * Megatron's {@code BlendedDataset}: several {@link SampleDataset}s mixed by weight. Sample {@code i}
 * is sample {@code datasetSampleIndex[i]} of dataset {@code datasetIndex[i]}, per {@link Blending}.
 * Threading: immutable; concurrent reads are safe.
 */
public final class BlendedDataset implements SampleDataset {
    private final SampleDataset[] datasets;
    private final Blending.Indices indices;

    /** Blends by normalized weights to {@code size} samples; or exhaustively when weights are null. */
    public BlendedDataset(SampleDataset[] datasets, double[] normalizedWeights, Long size) {
        this.datasets = datasets.clone();
        int sampleLength = datasets[0].sampleLength();
        for (SampleDataset d : datasets) {
            if (d.sampleLength() != sampleLength) {
                throw new IllegalArgumentException("blended datasets differ in sample length: " + sampleLength + " vs "
                        + d.sampleLength());
            }
        }
        if (normalizedWeights != null) {
            if (normalizedWeights.length != datasets.length) {
                throw new IllegalArgumentException(datasets.length + " datasets but " + normalizedWeights.length + " weights");
            }
            if (size == null) {
                throw new IllegalArgumentException("blending by weights needs a size");
            }
            this.indices = Blending.build(normalizedWeights, size);
        } else {
            long[] sizes = new long[datasets.length];
            for (int i = 0; i < sizes.length; i++) {
                sizes[i] = datasets[i].length();
            }
            this.indices = Blending.buildExhaustive(sizes);
        }
        for (int d = 0; d < datasets.length; d++) {
            if (indices.countsPerDataset()[d] > datasets[d].length()) {
                throw new IllegalArgumentException("blend draws " + indices.countsPerDataset()[d] + " samples from dataset " + d
                        + " which has only " + datasets[d].length() + "; build it with more samples (surplus)");
            }
        }
    }

    public Blending.Indices indices() {
        return indices;
    }

    @Override
    public long length() {
        return indices.datasetIndex().length;
    }

    @Override
    public int sampleLength() {
        return datasets[0].sampleLength();
    }

    @Override
    public void sample(long idx, int[] out, int off) throws IOException {
        int i = Math.toIntExact(idx);
        datasets[indices.datasetIndex()[i]].sample(indices.datasetSampleIndex()[i], out, off);
    }
}
