package org.sparkatron.data.gpt;

import java.io.IOException;

/**
 * Random access to packed samples: what {@link GptDataset} and {@link BlendedDataset} share, and what
 * {@link DatasetSampleSource} iterates. Threading: implementations are safe for concurrent reads.
 */
public interface SampleDataset {
    /** Number of samples. */
    long length();

    /** Tokens per sample ({@code seq_len + 1} with Megatron's default). */
    int sampleLength();

    /** Copies sample {@code idx} into {@code out[off, off + sampleLength())}. Blocks on remote reads. */
    void sample(long idx, int[] out, int off) throws IOException;
}
