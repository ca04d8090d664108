package org.sparkatron.train;

/**
 * Where one rank's training loop pulls its token samples from: the only contract between the data
 * loaders and the engine.
 *
 * <p>A sample is {@code sampleLength()} token ids ({@code seq_len + 1}: inputs are tokens [0, T), targets
 * are tokens [1, T+1)). Implementations are deterministic: after {@code skip(n)} from a fresh source the
 * next sample is the same one a source that produced {@code n} samples would produce next, which is
 * what resume from a checkpoint relies on. Called from one thread; {@code next} may block on I/O.
 */
public interface SampleSource extends AutoCloseable {
    /** Tokens per sample: sequence length plus one. */
    int sampleLength();

    /**
     * Copies the next sample into {@code out[offset, offset + sampleLength())}.
     *
     * @return false when the source is exhausted (nothing is written then)
     */
    boolean next(int[] out, int offset);

    /** Samples handed out so far, counting skipped ones. */
    long consumed();

    /** Skips {@code n} samples as if they had been read. */
    default void skip(long n) {
        int[] scratch = new int[sampleLength()];
        for (long i = 0; i < n; i++) {
            if (!next(scratch, 0)) {
                throw new IllegalStateException("source exhausted after " + consumed() + " samples while skipping " + n);
            }
        }
    }

    @Override
    default void close() {
    }

    /**
     * The source of a rank that reads no samples (a pipeline stage between the first and the last): it keeps
     * the data position through {@link #skip} and refuses {@link #next}, which such a rank never calls.
     */
    static SampleSource none(int sampleLength) {
        return new SampleSource() {
            private long consumed;

            @Override
            public int sampleLength() {
                return sampleLength;
            }

            @Override
            public boolean next(int[] out, int offset) {
                throw new IllegalStateException("this rank reads no data (a pipeline stage between the first and the last)");
            }

            @Override
            public long consumed() {
                return consumed;
            }

            @Override
            public void skip(long n) {
                consumed += n;
            }
        };
    }
}
