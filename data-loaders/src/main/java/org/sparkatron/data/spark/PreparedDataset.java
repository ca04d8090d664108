package org.sparkatron.data.spark;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.io.DataPaths;

/**
 * The output of {@code prepare}: a directory of Megatron shards and {@code manifest.json}, which lists
 * every shard with its document and token counts, the tokenizer, its vocabulary size and end-of-document
 * id, and the dtype. {@link #open} reads the manifest and opens the shards (ready to be blended with
 * their token counts as weights). Needs no Spark. Immutable.
 */
public record PreparedDataset(String dir, String tokenizer, int vocabSize, int eodId, String dtype, long documents,
                              long tokens, List<String> shardPrefixes, List<Long> shardTokens) {
    public static final String MANIFEST = "manifest.json";

    /** Reads {@code dir/manifest.json}. */
    public static PreparedDataset read(String dir, Map<String, String> hadoopConf) throws IOException {
        String path = DataPaths.child(dir, MANIFEST);
        JsonNode m;
        try {
            m = new ObjectMapper().readTree(DataPaths.readAll(path, hadoopConf));
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IOException(path + ": not a valid manifest: " + e.getOriginalMessage(), e);
        }
        if (!"megatron-indexed-dataset".equals(m.path("format").asText())) {
            throw new IOException(path + ": not a Sparkatron prepare manifest (format field missing or wrong)");
        }
        List<String> prefixes = new ArrayList<>();
        List<Long> tokens = new ArrayList<>();
        for (JsonNode s : m.path("shards")) {
            prefixes.add(DataPaths.child(dir, s.path("prefix").asText()));
            tokens.add(s.path("tokens").asLong());
        }
        return new PreparedDataset(dir, m.path("tokenizer").asText(), m.path("vocab_size").asInt(), m.path("eod").asInt(),
                m.path("dtype").asText(), m.path("documents").asLong(), m.path("tokens").asLong(), prefixes, tokens);
    }

    /** Opens every shard; the caller closes them. */
    public List<IndexedDataset> open(Map<String, String> hadoopConf) throws IOException {
        List<IndexedDataset> out = new ArrayList<>();
        try {
            for (String p : shardPrefixes) {
                out.add(IndexedDataset.open(p, hadoopConf));
            }
        } catch (IOException e) {
            for (IndexedDataset d : out) {
                d.close();
            }
            throw e;
        }
        return out;
    }

    static void write(String dir, String tokenizer, int vocab, int eod, String dtype, List<ShardWriter.Shard> shards,
                      Map<String, String> hadoopConf) throws IOException {
        ObjectMapper om = new ObjectMapper();
        ObjectNode m = om.createObjectNode();
        m.put("format", "megatron-indexed-dataset");
        m.put("tokenizer", tokenizer);
        m.put("vocab_size", vocab);
        m.put("eod", eod);
        m.put("dtype", dtype);
        long docs = 0;
        long toks = 0;
        long bytes = 0;
        ArrayNode arr = m.putArray("shards");
        for (ShardWriter.Shard s : shards) {
            ObjectNode o = arr.addObject();
            o.put("prefix", s.prefix());
            o.put("documents", s.documents());
            o.put("tokens", s.tokens());
            o.put("text_bytes", s.textBytes());
            docs += s.documents();
            toks += s.tokens();
            bytes += s.textBytes();
        }
        m.put("documents", docs);
        m.put("tokens", toks);
        m.put("text_bytes", bytes);
        try (OutputStream out = DataPaths.create(DataPaths.child(dir, MANIFEST), hadoopConf)) {
            out.write(om.writerWithDefaultPrettyPrinter().writeValueAsBytes(m));
        }
    }
}
