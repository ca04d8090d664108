package org.sparkatron.data.tokenizer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import org.sparkatron.data.io.DataPaths;

/**
 * The tokenizer saved beside a model's weights, so that text goes in and comes out of a trained model without
 * the user naming the tokenizer again. A Hugging Face tokenizer is saved as {@code tokenizer.json}, as the
 * Hugging Face Hub keeps it (so a model directory from the Hub is read the same way); a named tokenizer
 * ({@code gpt2} or {@code gpt2-legacy}, built in through jtokkit) as {@code sparkatron_tokenizer.json} =
 * {@code {"tokenizer": "gpt2"}}.
 * Works on any local or Hadoop path. Stateless; each call blocks on its file I/O and throws IOException for a
 * file that cannot be read or written.
 */
public final class ModelTokenizer {
    /** Hugging Face's file name for a fast tokenizer. */
    public static final String HF_FILE = "tokenizer.json";
    /** Names a built-in tokenizer: {@code {"tokenizer": "gpt2"}}. */
    public static final String NAME_FILE = "sparkatron_tokenizer.json";
    private static final ObjectMapper JSON = new ObjectMapper();

    private ModelTokenizer() {
    }

    /** The built-in tokenizers (jtokkit's GPT-2 encoding, see {@link Gpt2Tokenizer}). */
    static final java.util.List<String> BUILT_IN = java.util.List.of("gpt2", "gpt2-legacy");

    /** Saves {@code tokenizer} (a built-in name or a path to a tokenizer.json) into the model directory {@code dir}. */
    public static void save(String tokenizer, String dir, Map<String, String> hadoopConf) throws IOException {
        if (BUILT_IN.contains(tokenizer.toLowerCase(java.util.Locale.ROOT))) {
            try (OutputStream out = DataPaths.create(DataPaths.child(dir, NAME_FILE), hadoopConf)) {
                out.write(JSON.writeValueAsBytes(JSON.createObjectNode().put("tokenizer", tokenizer.toLowerCase(java.util.Locale.ROOT))));
            }
            return;
        }
        if (!DataPaths.exists(tokenizer, hadoopConf)) {
            throw new IOException("tokenizer: '" + tokenizer + "' is neither gpt2 nor an existing tokenizer.json file");
        }
        byte[] content = DataPaths.readAll(tokenizer, hadoopConf);
        try (OutputStream out = DataPaths.create(DataPaths.child(dir, HF_FILE), hadoopConf)) {
            out.write(content);
        }
    }

    /**
     * The tokenizer saved in {@code dir}, as {@link TokenizerSpec#parse} takes it: the path of its
     * tokenizer.json, a built-in name, or null when the directory holds none.
     */
    public static String find(String dir, Map<String, String> hadoopConf) throws IOException {
        String hf = DataPaths.child(dir, HF_FILE);
        if (DataPaths.exists(hf, hadoopConf)) {
            return hf;
        }
        String named = DataPaths.child(dir, NAME_FILE);
        if (DataPaths.exists(named, hadoopConf)) {
            JsonNode n = JSON.readTree(new String(DataPaths.readAll(named, hadoopConf), StandardCharsets.UTF_8));
            String name = n.path("tokenizer").asText("");
            if (!BUILT_IN.contains(name)) {
                throw new IOException(named + ": unknown tokenizer '" + name + "' (known: " + BUILT_IN + ")");
            }
            return name;
        }
        return null;
    }
}
