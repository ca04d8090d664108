package org.sparkatron.data.tokenizer;

/**
 * Text to token ids and back. Implementations wrap well-kept libraries (jtokkit for GPT-2, the Hugging
 * Face tokenizers library through DJL for {@code tokenizer.json}); nothing here is hand-written BPE.
 *
 * <p>Threading: an instance is used by one thread at a time (one per Spark task); create one per
 * thread. Blocking: pure CPU. Failure: {@link #close} releases native memory where there is some.
 */
public interface TextTokenizer extends AutoCloseable {
    /** Token ids of {@code text}, without special tokens and without the end-of-document token. */
    int[] encode(String text);

    /** The text of {@code ids}; {@code decode(encode(s)).equals(s)} for byte-level BPE tokenizers. */
    String decode(int[] ids);

    /** The end-of-document token appended after every document. */
    int eodId();

    /** Number of token ids (largest id + 1). */
    int vocabSize();

    /**
     * {@link #encode} plus the end-of-document token: one document as it is stored. As Megatron's
     * tools/preprocess_data.py does, a text with no tokens (an empty string) stays empty: the
     * end-of-document token follows only a non-empty document.
     */
    default int[] encodeDocument(String text) {
        int[] ids = encode(text);
        if (ids.length == 0) {
            return ids;
        }
        int[] out = java.util.Arrays.copyOf(ids, ids.length + 1);
        out[ids.length] = eodId();
        return out;
    }

    @Override
    default void close() {
    }
}
