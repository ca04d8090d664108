package org.sparkatron.data.tokenizer;

import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import org.sparkatron.data.io.DataPaths;

/**
 * What tokenizer to build, in a form that travels to Spark executors: {@code "gpt2"} (or
 * {@code "gpt2-legacy"}, see {@link Gpt2Tokenizer}), or the content of
 * a {@code tokenizer.json} (read once on the driver from any local or Hadoop path, so executors need no
 * copy of the file). Immutable and serializable; {@link #create} builds a fresh tokenizer.
 */
public final class TokenizerSpec implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final String GPT2_LEGACY = "gpt2-legacy";

    private final String name;
    private final String json;
    private final Integer eodOverride;
    private final boolean addSpecialTokens;

    private TokenizerSpec(String name, String json, Integer eodOverride, boolean addSpecialTokens) {
        this.name = name;
        this.json = json;
        this.eodOverride = eodOverride;
        this.addSpecialTokens = addSpecialTokens;
    }

    /** GPT-2; a literal {@code <|endoftext|>} in the text is the special token (see {@link Gpt2Tokenizer}). */
    public static TokenizerSpec gpt2() {
        return new TokenizerSpec("gpt2", null, null, false);
    }

    /** GPT-2 with {@code <|endoftext|>} in the text encoded as ordinary text (Megatron's legacy tokenizer). */
    public static TokenizerSpec gpt2Legacy() {
        return new TokenizerSpec(GPT2_LEGACY, null, null, false);
    }

    /** A tokenizer.json given as text. */
    public static TokenizerSpec huggingFace(String name, String json, Integer eodOverride, boolean addSpecialTokens) {
        return new TokenizerSpec(name, json, eodOverride, addSpecialTokens);
    }

    /** {@code "gpt2"}, {@code "gpt2-legacy"} or a path (local or Hadoop) to a tokenizer.json. */
    public static TokenizerSpec parse(String arg, Integer eodOverride, Map<String, String> hadoopConf) throws IOException {
        if (arg.equalsIgnoreCase("gpt2")) {
            return gpt2();
        }
        if (arg.equalsIgnoreCase(GPT2_LEGACY)) {
            return gpt2Legacy();
        }
        if (!DataPaths.exists(arg, hadoopConf)) {
            throw new IOException("tokenizer: '" + arg + "' is neither gpt2, gpt2-legacy nor an existing tokenizer.json file");
        }
        return huggingFace(arg, new String(DataPaths.readAll(arg, hadoopConf), StandardCharsets.UTF_8), eodOverride, false);
    }

    public String name() {
        return name;
    }

    public TextTokenizer create() {
        if (json == null) {
            return new Gpt2Tokenizer(!name.equals(GPT2_LEGACY));
        }
        return new HfTokenizer(json, eodOverride, addSpecialTokens);
    }

    @Override
    public String toString() {
        return name;
    }
}
