package org.sparkatron.checkpoint;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.model.ModelConfig;

/**
 * The {@code metadata.json} of one checkpoint: what was saved (every tensor's global shape and which
 * file holds which global element runs of it), from where (the layout), when (step, consumed samples,
 * each data-parallel replica's data position, the dropout counter), for what model (its config), and a
 * size and CRC32C per file. Written last, so its presence inside a committed directory means the files
 * were complete when it was written; the sizes and checksums catch any later damage. Immutable.
 *
 * <p>Tensor names: {@code model/<param>}, {@code optim.m/<param>}, {@code optim.v/<param>}, with our
 * internal parameter names ({@link org.sparkatron.model.ParameterSet}).
 */
public record CheckpointMetadata(long step, long consumedSamples, long dropoutSteps, long[] dataPositions, int tp, int dp,
                                 int pp, int ep, ModelConfig config, Map<String, String> extra, Map<String, TensorEntry> tensors,
                                 Map<String, FileEntry> files) {
    public static final String FILE = "metadata.json";
    public static final String FORMAT = "sparkatron-distributed-checkpoint";
    public static final int VERSION = 1;
    private static final ObjectMapper JSON = new ObjectMapper();

    /** One tensor: its global (TP = 1) shape and the shards that together hold it. */
    public record TensorEntry(int[] shape, List<ShardEntry> shards) {
    }

    /** A 1-D tensor {@code key} of {@code file} holding the global runs {@code {start, length, stride, count}}. */
    public record ShardEntry(String file, String key, List<long[]> runs) {
    }

    /** A file's size in bytes and CRC32C (8 hex digits). */
    public record FileEntry(long bytes, String crc32c) {
    }

    public byte[] toJson() {
        ObjectNode o = JSON.createObjectNode();
        o.put("format", FORMAT).put("version", VERSION);
        o.put("step", step).put("consumed_samples", consumedSamples).put("dropout_steps", dropoutSteps);
        ArrayNode pos = o.putArray("data_positions");
        for (long p : dataPositions) {
            pos.add(p);
        }
        o.putObject("layout").put("tp", tp).put("dp", dp).put("pp", pp).put("ep", ep);
        o.set("config", config.toJson());
        ObjectNode ex = o.putObject("extra");
        extra.forEach(ex::put);
        ObjectNode ts = o.putObject("tensors");
        tensors.forEach((name, t) -> {
            ObjectNode tn = ts.putObject(name);
            ArrayNode shape = tn.putArray("shape");
            for (int d : t.shape()) {
                shape.add(d);
            }
            ArrayNode shards = tn.putArray("shards");
            for (ShardEntry s : t.shards()) {
                ObjectNode sn = shards.addObject().put("file", s.file()).put("key", s.key());
                ArrayNode runs = sn.putArray("runs");
                for (long[] r : s.runs()) {
                    runs.addArray().add(r[0]).add(r[1]).add(r[2]).add(r[3]);
                }
            }
        });
        ObjectNode fs = o.putObject("files");
        files.forEach((name, f) -> fs.putObject(name).put("bytes", f.bytes()).put("crc32c", f.crc32c()));
        try {
            return JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(o);
        } catch (IOException e) {
            throw new IllegalStateException("cannot serialise checkpoint metadata", e);
        }
    }

    /**
     * Parses and validates a metadata file's bytes.
     *
     * @throws CheckpointException naming {@code where} and the problem (fallback allowed: the file is damaged)
     */
    public static CheckpointMetadata parse(byte[] bytes, String where) throws CheckpointException {
        try {
            JsonNode o = JSON.readTree(new String(bytes, StandardCharsets.UTF_8));
            if (o == null || !o.isObject() || !FORMAT.equals(o.path("format").asText())) {
                throw bad(where, "not a Sparkatron checkpoint metadata file (no \"format\": \"" + FORMAT + "\")");
            }
            if (o.path("version").asInt(-1) != VERSION) {
                throw bad(where, "unsupported checkpoint version " + o.path("version") + " (this build reads " + VERSION + ")");
            }
            JsonNode posNode = need(o, "data_positions", where);
            long[] pos = new long[posNode.size()];
            for (int i = 0; i < pos.length; i++) {
                pos[i] = posNode.get(i).asLong();
            }
            JsonNode layout = need(o, "layout", where);
            ModelConfig cfg;
            try {
                cfg = ModelConfig.fromJson(need(o, "config", where));
            } catch (IllegalArgumentException e) {
                throw bad(where, "invalid model config: " + e.getMessage());
            }
            Map<String, String> extra = new LinkedHashMap<>();
            o.path("extra").fields().forEachRemaining(e -> extra.put(e.getKey(), e.getValue().asText()));
            Map<String, TensorEntry> tensors = new LinkedHashMap<>();
            for (Iterator<Map.Entry<String, JsonNode>> it = need(o, "tensors", where).fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                JsonNode sh = need(e.getValue(), "shape", where);
                int[] shape = new int[sh.size()];
                for (int i = 0; i < shape.length; i++) {
                    shape[i] = sh.get(i).asInt();
                }
                List<ShardEntry> shards = new ArrayList<>();
                for (JsonNode s : need(e.getValue(), "shards", where)) {
                    List<long[]> runs = new ArrayList<>();
                    for (JsonNode r : need(s, "runs", where)) {
                        if (r.size() != 4) {
                            throw bad(where, "tensor '" + e.getKey() + "': a run must be [start, length, stride, count], got " + r);
                        }
                        runs.add(new long[] {r.get(0).asLong(), r.get(1).asLong(), r.get(2).asLong(), r.get(3).asLong()});
                    }
                    shards.add(new ShardEntry(need(s, "file", where).asText(), need(s, "key", where).asText(), runs));
                }
                tensors.put(e.getKey(), new TensorEntry(shape, shards));
            }
            Map<String, FileEntry> files = new LinkedHashMap<>();
            for (Iterator<Map.Entry<String, JsonNode>> it = need(o, "files", where).fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                files.put(e.getKey(), new FileEntry(need(e.getValue(), "bytes", where).asLong(),
                        need(e.getValue(), "crc32c", where).asText()));
            }
            return new CheckpointMetadata(need(o, "step", where).asLong(), need(o, "consumed_samples", where).asLong(),
                    o.path("dropout_steps").asLong(0), pos, need(layout, "tp", where).asInt(), need(layout, "dp", where).asInt(),
                    layout.path("pp").asInt(1), layout.path("ep").asInt(1), cfg, extra, tensors, files);
        } catch (IOException e) {
            if (e instanceof CheckpointException ce) {
                throw ce;
            }
            throw new CheckpointException(where + ": malformed metadata JSON (" + e.getMessage() + ")", e, true);
        }
    }

    private static JsonNode need(JsonNode o, String key, String where) throws CheckpointException {
        JsonNode n = o.get(key);
        if (n == null || n.isNull()) {
            throw bad(where, "missing \"" + key + "\"");
        }
        return n;
    }

    private static CheckpointException bad(String where, String what) {
        return new CheckpointException(where + ": " + what, true);
    }

    /**
     * Refuses a checkpoint made for another model, naming the differing settings (the vocabulary first:
     * the commonest mistake is a checkpoint from another tokenizer).
     *
     * @throws CheckpointException (fallback not allowed)
     */
    public void requireModel(ModelConfig model, String where) throws CheckpointException {
        if (config.equals(model)) {
            return;
        }
        if (config.vocabSize() != model.vocabSize()) {
            throw new CheckpointException(where + ": checkpoint is for a vocabulary of " + config.vocabSize()
                    + " tokens, the model has " + model.vocabSize() + " (another tokenizer?)", false);
        }
        ObjectNode a = config.toJson();
        ObjectNode b = model.toJson();
        List<String> diffs = new ArrayList<>();
        a.fieldNames().forEachRemaining(k -> {
            if (!a.get(k).equals(b.get(k))) {
                diffs.add(k + " " + a.get(k) + " (model: " + b.get(k) + ")");
            }
        });
        b.fieldNames().forEachRemaining(k -> {
            if (!a.has(k)) {
                diffs.add(k + " absent (model: " + b.get(k) + ")");
            }
        });
        throw new CheckpointException(where + ": checkpoint is for another model config: " + String.join(", ", diffs), false);
    }
}
