package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.TpShards;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.RankContext;

/**
 * The {@code init_from} config key: a Hugging Face model directory ({@code config.json} +
 * {@code model.safetensors}, what {@code ./sparkatron export}, {@code init} and a finished job write) on
 * any Hadoop path, whose weights replace the seed initialisation. The driver checks it before launching
 * ({@link #check}); each rank reads it and keeps its tensor-parallel shard ({@link #load}). A checkpoint
 * found under {@code checkpoint_dir} still wins: a resumed job continues from its checkpoint.
 *
 * <p>Stateless; blocking file I/O; failures are IllegalArgumentException naming the directory and the
 * problem (missing files, another model config).
 */
final class InitFrom {
    private InitFrom() {
    }

    /** The model directory's {@code config.json} (refused clearly if it cannot be read). */
    static JsonNode config(String dir, Configuration conf) {
        Path file = new Path(new Path(dir), ModelStore.CONFIG);
        try {
            FileSystem fs = file.getFileSystem(conf);
            if (!fs.exists(file)) {
                throw new IllegalArgumentException("init_from '" + dir + "' is not a model directory: " + ModelStore.CONFIG + " is missing");
            }
            try (InputStream in = fs.open(file)) {
                return TrainConfig.JSON.readTree(in);
            }
        } catch (IOException e) {
            throw new IllegalArgumentException("init_from '" + dir + "': cannot read " + file + ": " + e.getMessage(), e);
        }
    }

    /** Driver side: the directory holds both files and a model of the job's config. */
    static void check(TrainConfig cfg, Configuration conf) {
        if (cfg.initFrom == null) {
            return;
        }
        JsonNode json = config(cfg.initFrom, conf);
        ModelConfig theirs;
        try {
            theirs = ModelConfig.fromJson(json);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("init_from '" + cfg.initFrom + "': " + ModelStore.CONFIG + ": " + e.getMessage(), e);
        }
        String diff = differences(theirs, cfg.model());
        if (!diff.isEmpty()) {
            throw new IllegalArgumentException("init_from '" + cfg.initFrom + "' holds another model than the job's config: " + diff);
        }
        Path weights = new Path(new Path(cfg.initFrom), ModelStore.WEIGHTS);
        try {
            if (!weights.getFileSystem(conf).exists(weights)) {
                throw new IllegalArgumentException("init_from '" + cfg.initFrom + "' is not a model directory: " + ModelStore.WEIGHTS + " is missing");
            }
            // the whole model once, here: damaged files and NaN weights are refused before launch, not on every attempt
            load(cfg, null, conf).close();
        } catch (IOException e) {
            throw new IllegalArgumentException("init_from '" + cfg.initFrom + "': " + e.getMessage(), e);
        }
    }

    /** {@code message} with the temporary copy's paths replaced by the user's directory. */
    static String userPaths(String message, java.nio.file.Path tmp, String userDir) {
        if (message == null) {
            return "";
        }
        String m = message.replace(tmp.toString(), userDir);
        String real = tmp.toAbsolutePath().toString();
        return m.replace(real, userDir);
    }

    /** "key A (job: B), ..." for every setting where the two configs differ; empty when equal. */
    static String differences(ModelConfig theirs, ModelConfig job) {
        if (theirs.equals(job)) {
            return "";
        }
        ObjectNode a = theirs.toJson();
        ObjectNode b = job.toJson();
        List<String> diffs = new ArrayList<>();
        a.fieldNames().forEachRemaining(k -> {
            if (!a.get(k).equals(b.get(k))) {
                diffs.add(k + " " + a.get(k) + " (job: " + b.get(k) + ")");
            }
        });
        b.fieldNames().forEachRemaining(k -> {
            if (!a.has(k)) {
                diffs.add(k + " absent (job: " + b.get(k) + ")");
            }
        });
        return diffs.isEmpty() ? "configs differ" : String.join(", ", diffs);
    }

    /**
     * Rank side: this rank's shard of the model in {@code cfg.initFrom} (copied to a local temporary
     * directory first, so any Hadoop file system works). Every rank reads the whole model transiently.
     * With {@code rank} null (the driver's check), reads and validates the whole model and returns it (the
     * caller closes it).
     * Errors name the user's directory, never the temporary copy.
     */
    static Transformer load(TrainConfig cfg, RankContext rank, Configuration conf) throws IOException {
        java.nio.file.Path tmp = java.nio.file.Files.createTempDirectory("sparkatron-init");
        try {
            Path dir = new Path(cfg.initFrom);
            FileSystem fs = dir.getFileSystem(conf);
            for (String f : new String[] {ModelStore.CONFIG, ModelStore.WEIGHTS}) {
                fs.copyToLocalFile(false, new Path(dir, f), new Path(tmp.resolve(f).toUri()), true);
            }
            Transformer full;
            try { // fp32, TP = 1, on the rank's device (the driver's check: a CPU device of its own)
                full = ModelStore.load(tmp, rank == null ? new CpuDevice() : rank.device());
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException("init_from '" + cfg.initFrom + "': " + userPaths(e.getMessage(), tmp, cfg.initFrom), e);
            } catch (IOException e) {
                throw new IOException(userPaths(e.getMessage(), tmp, cfg.initFrom), e);
            }
            if (rank == null) {
                return full;
            }
            try {
                String diff = differences(full.config(), cfg.model());
                if (!diff.isEmpty()) { // changed since the driver checked it
                    throw new IllegalArgumentException("init_from '" + cfg.initFrom + "' holds another model than the job's config: " + diff);
                }
                // the rank's shard (the whole model at TP 1), in a model bound to the rank's TP group
                Transformer model = new Transformer(full.config(), rank);
                TpShards.scatter(full.config(), full.params(), model.params(), rank.tp().rank(), rank.tp().size(),
                        rank.expertParallel().rank(), rank.expertParallel().size(), false);
                return model;
            } finally {
                full.close();
            }
        } finally {
            SparkatronModel.deleteTree(tmp);
        }
    }
}
