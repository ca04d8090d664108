package org.sparkatron.data.tokenizer;

import com.knuddels.jtokkit.Encodings;
import com.knuddels.jtokkit.api.Encoding;
import com.knuddels.jtokkit.api.EncodingType;
import com.knuddels.jtokkit.api.IntArrayList;

/**
 * GPT-2's byte-level BPE (vocabulary of 50257, end-of-text 50256) from jtokkit ({@code R50K_BASE}).
 *
 * <p>A literal {@code <|endoftext|>} in the text is, by default, the special token 50256, as in
 * Megatron Core's {@code GPT2BPETokenizer} since its tokenizer system wraps Hugging Face's
 * {@code GPT2Tokenizer} (the default from core 0.15; the legacy system is gone from Megatron-LM's main
 * branch): the text is split around each
 * occurrence and the pieces are encoded as ordinary text, which is what that tokenizer's added-token
 * split does. With {@code specialTokensInText = false} it is ordinary text ({@code <}, {@code |},
 * {@code endoftext}, ...), as in Megatron's older {@code _GPT2BPETokenizer} ({@code --legacy-tokenizer}).
 * The encoding object is shared and thread-safe; instances are cheap.
 */
public final class Gpt2Tokenizer implements TextTokenizer {
    public static final int EOD = 50256;
    public static final int VOCAB = 50257;
    public static final String END_OF_TEXT = "<|endoftext|>";
    private static final Encoding ENCODING = Encodings.newLazyEncodingRegistry().getEncoding(EncodingType.R50K_BASE);

    private final boolean specialTokensInText;

    /** {@code <|endoftext|>} in the text is the special token (Megatron Core's current GPT2BPETokenizer). */
    public Gpt2Tokenizer() {
        this(true);
    }

    /** @param specialTokensInText false to encode {@code <|endoftext|>} as ordinary text (legacy Megatron) */
    public Gpt2Tokenizer(boolean specialTokensInText) {
        this.specialTokensInText = specialTokensInText;
    }

    @Override
    public int[] encode(String text) {
        int at = specialTokensInText ? text.indexOf(END_OF_TEXT) : -1;
        if (at < 0) {
            return ENCODING.encodeOrdinary(text).toArray();
        }
        IntArrayList out = new IntArrayList();
        int from = 0;
        while (at >= 0) {
            appendOrdinary(out, text.substring(from, at));
            out.add(EOD);
            from = at + END_OF_TEXT.length();
            at = text.indexOf(END_OF_TEXT, from);
        }
        appendOrdinary(out, text.substring(from));
        return out.toArray();
    }

    private static void appendOrdinary(IntArrayList out, String piece) {
        if (!piece.isEmpty()) {
            IntArrayList ids = ENCODING.encodeOrdinary(piece);
            for (int i = 0; i < ids.size(); i++) {
                out.add(ids.get(i));
            }
        }
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
