package org.sparkatron.data.gpt;

import java.io.IOException;

/**
 * Megatron's {@code BlendedDataset}: several {@link SampleDataset}s mixed by weight. Sample {@code i}
 * is sample {@code datasetSampleIndex[i]} of dataset {@code datasetIndex[i]}, per {@link Blending}.
 *
 * <p>As Megatron's constructor does, every weight must be positive; with a size the weights are
 * normalized here (again, when the builder already normalized them: the twice-normalized values are
 * the ones Megatron's {@code build_blending_indices} receives, and their last bits decide ties), and
 * without a size they are whole sample counts, blended exhaustively.
 *
 * <p>Threading: immutable; concurrent reads are safe. Failure: bad weights or a blend that draws
 * more samples from a dataset than it has are refused with {@link IllegalArgumentException}.
 */
public final class BlendedDataset implements SampleDataset {
    private final SampleDataset[] datasets;
    private final double[] weights;
    private final Blending.Indices indices;

    /**
     * @param weights positive weights (normalized here) when {@code size} is given; otherwise the whole
     *                number of samples to take from each dataset (Megatron passes their lengths)
     * @param size    blended samples, or null for the exhaustive blend
     */
    public BlendedDataset(SampleDataset[] datasets, double[] weights, Long size) {
        this.datasets = datasets.clone();
        int sampleLength = datasets[0].sampleLength();
        for (SampleDataset d : datasets) {
            if (d.sampleLength() != sampleLength) {
                throw new IllegalArgumentException("blended datasets differ in sample length: " + sampleLength + " vs "
                        + d.sampleLength());
            }
        }
        if (weights.length != datasets.length) {
            throw new IllegalArgumentException(datasets.length + " datasets but " + weights.length + " weights");
        }
        for (int d = 0; d < weights.length; d++) {
            if (!(weights[d] > 0) || Double.isInfinite(weights[d])) {
                throw new IllegalArgumentException("blend weight of dataset " + d + " is " + weights[d]
                        + "; Megatron requires every weight of a blend to be positive and finite");
            }
        }
        if (size != null) {
            this.weights = Blending.normalize(weights);
            this.indices = Blending.build(this.weights, size);
        } else {
            long[] sizes = new long[weights.length];
            for (int i = 0; i < sizes.length; i++) {
                if (weights[i] != Math.rint(weights[i])) {
                    throw new IllegalArgumentException("an exhaustive blend (no size) takes whole sample counts, got " + weights[i]);
                }
                sizes[i] = (long) weights[i];
            }
            this.weights = weights.clone();
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

    /** The weights the blending indices were built from (Megatron's {@code BlendedDataset.weights}). */
    public double[] weights() {
        return weights.clone();
    }

    /** The blended datasets, in blend order. */
    public SampleDataset dataset(int i) {
        return datasets[i];
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
