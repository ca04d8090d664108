package org.sparkatron.data.tokenizer;

import com.knuddels.jtokkit.Encodings;
import com.knuddels.jtokkit.api.Encoding;
import com.knuddels.jtokkit.api.EncodingType;
import com.knuddels.jtokkit.api.IntArrayList;

/**
 * GPT-2's byte-level BPE (vocabulary of 50257, end-of-text 50256) from jtokkit ({@code R50K_BASE}).
 * {@code encodeOrdinary} is used so that text containing the literal {@code <|endoftext|>} is encoded
 * as ordinary text rather than refused. The encoding object is shared and thread-safe; instances are
 * cheap.
 */
public final class Gpt2Tokenizer implements TextTokenizer {
    public static final int EOD = 50256;
    public static final int VOCAB = 50257;
    private static final Encoding ENCODING = Encodings.newLazyEncodingRegistry().getEncoding(EncodingType.R50K_BASE);

    @Override
    public int[] encode(String text) {
        return ENCODING.encodeOrdinary(text).toArray();
    }

    @Override
    public String decode(int[] ids) {
        IntArrayList l = new IntArrayList(ids.length);
        for (int id : ids) {
            l.add(id);
        }
        return ENCODING.decode(l);
    }

    @Override
    public int eodId() {
        return EOD;
    }

    @Override
    public int vocabSize() {
        return VOCAB;
    }
}
