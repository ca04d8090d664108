package org.sparkatron.data.tokenizer;

import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

/**
 * A Hugging Face {@code tokenizer.json} (BPE, and the Llama-style tokenizers the same file describes)
 * run by the Rust tokenizers library through DJL. Padding and truncation are off (DJL's defaults pad and
 * truncate to 512, wrong for corpus work); DJL runs offline on the CPU build bundled in its jar.
 *
 * <p>The end-of-document token is the one given, or the first special token named like one
 * ({@code <|endoftext|>}, {@code </s>}, {@code <|end_of_text|>}, {@code <eos>}); a file with none and no
 * id given is refused. Holds native memory: {@link #close} it. One thread at a time.
 */
public final class HfTokenizer implements TextTokenizer {
    private static final List<String> EOD_NAMES = List.of("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>");

    static {
        // Never reach for the network: DJL otherwise tries to fetch a CUDA build where it sees CUDA.
        if (System.getProperty("ai.djl.offline") == null) {
            System.setProperty("ai.djl.offline", "true");
        }
    }

    private final HuggingFaceTokenizer tok;
    private final boolean addSpecialTokens;
    private final int eod;
    private final int vocab;

    /**
     * @param json             the tokenizer.json content
     * @param eodOverride      the end-of-document id, or null to find it in the file
     * @param addSpecialTokens whether the tokenizer's post-processor adds its tokens (e.g. Llama's BOS)
     */
    public HfTokenizer(byte[] json, Integer eodOverride, boolean addSpecialTokens) {
        this.addSpecialTokens = addSpecialTokens;
        JsonNode root;
        try {
            root = new ObjectMapper().readTree(json);
        } catch (IOException e) {
            throw new IllegalArgumentException("tokenizer.json is not valid JSON: " + e.getMessage(), e);
        }
        int maxId = -1;
        JsonNode vocabNode = root.path("model").path("vocab");
        if (vocabNode.isObject()) {
            for (JsonNode v : vocabNode) {
                maxId = Math.max(maxId, v.asInt());
            }
        } else if (vocabNode.isArray()) { // Unigram: [[piece, score], ...]
            maxId = vocabNode.size() - 1;
        }
        Integer found = null;
        for (JsonNode t : root.path("added_tokens")) {
            maxId = Math.max(maxId, t.path("id").asInt());
            if (found == null && EOD_NAMES.contains(t.path("content").asText()) && t.path("special").asBoolean(true)) {
                found = t.path("id").asInt();
            }
        }
        if (maxId < 0) {
            throw new IllegalArgumentException("tokenizer.json has no vocabulary (model.vocab)");
        }
        this.vocab = maxId + 1;
        if (eodOverride == null && found == null) {
            throw new IllegalArgumentException("tokenizer.json has no end-of-document token among " + EOD_NAMES
                    + "; give its id explicitly");
        }
        this.eod = eodOverride != null ? eodOverride : found;
        try {
            this.tok = HuggingFaceTokenizer.newInstance(new ByteArrayInputStream(json),
                    Map.of("padding", "false", "truncation", "false", "addSpecialTokens", Boolean.toString(addSpecialTokens)));
        } catch (IOException | RuntimeException e) {
            throw new IllegalArgumentException("tokenizer.json could not be loaded: " + e.getMessage(), e);
        }
    }

    public HfTokenizer(String json, Integer eodOverride, boolean addSpecialTokens) {
        this(json.getBytes(StandardCharsets.UTF_8), eodOverride, addSpecialTokens);
    }

    @Override
    public int[] encode(String text) {
        long[] ids = tok.encode(text, addSpecialTokens, false).getIds();
        int[] out = new int[ids.length];
        for (int i = 0; i < ids.length; i++) {
            out[i] = (int) ids[i];
        }
        return out;
    }

    @Override
    public String decode(int[] ids) {
        long[] l = new long[ids.length];
        for (int i = 0; i < ids.length; i++) {
            l[i] = ids[i];
        }
        return tok.decode(l, false);
    }

    @Override
    public int eodId() {
        return eod;
    }

    @Override
    public int vocabSize() {
        return vocab;
    }

    @Override
    public void close() {
        tok.close();
    }

}
