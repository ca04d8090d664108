package org.sparkatron.checkpoint;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import org.sparkatron.device.Device;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.precision.Precision;

/**
 * A model directory as Hugging Face lays it out: {@code config.json} + {@code model.safetensors}, so the
 * same folder loads in {@code transformers} and here.
 */
public final class ModelStore {
    public static final String CONFIG = "config.json";
    public static final String WEIGHTS = "model.safetensors";

    private ModelStore() {
    }

    /**
     * Saves a whole (TP = 1) model; a tensor-parallel shard is refused (use {@code TpCheckpoint.save}).
     * Both files are written completely under temporary names first and then renamed into place, weights
     * before config: a save that fails or is killed leaves any model already in {@code dir} as it was
     * (at worst, killed between the two renames, new weights beside the old config, which a load refuses
     * when the shapes differ).
     */
    public static void save(Transformer model, Path dir) throws IOException {
        if (model.tensorParallel().size() > 1) {
            throw new IllegalArgumentException("this model holds one of " + model.tensorParallel().size()
                    + " tensor-parallel shards; save it with TpCheckpoint.save, which gathers the full weights");
        }
        Files.createDirectories(dir);
        String unique = ".partial-" + ProcessHandle.current().pid() + "-" + System.nanoTime();
        Path config = dir.resolve(CONFIG + unique);
        Path weights = dir.resolve(WEIGHTS + unique);
        try {
            new ObjectMapper().writerWithDefaultPrettyPrinter().writeValue(config.toFile(), model.config().toJson());
            HfCheckpoint.save(weights, model.config(), model.params());
            Files.move(weights, dir.resolve(WEIGHTS), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            Files.move(config, dir.resolve(CONFIG), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(weights);
            Files.deleteIfExists(config);
        }
    }

    /** Reads the config and weights of a model directory onto {@code device} (TP = 1, fp32). */
    public static Transformer load(Path dir, Device device) throws IOException {
        return load(dir, RankContext.single(device));
    }

    /** Reads a model directory onto {@code device}, to compute in {@code precision} (the stored weights become the fp32 master weights). */
    public static Transformer load(Path dir, Device device, Precision precision) throws IOException {
        return load(dir, RankContext.single(device, precision));
    }

    /**
     * Reads a model directory as a whole (TP = 1) model for the rank {@code ctx} describes; a context with
     * a TP group larger than one is refused (use {@code TpCheckpoint.load}, which keeps the rank's shard).
     */
    public static Transformer load(Path dir, RankContext ctx) throws IOException {
        if (ctx.tp().size() > 1) {
            throw new IllegalArgumentException("ModelStore.load builds a whole model; use TpCheckpoint.load for a tensor-parallel rank");
        }
        Path config = dir.resolve(CONFIG);
        Path weights = dir.resolve(WEIGHTS);
        if (!Files.isRegularFile(config)) {
            throw new IllegalArgumentException(dir + " is not a model directory: " + CONFIG + " is missing");
        }
        if (!Files.isRegularFile(weights)) {
            throw new IllegalArgumentException(dir + " is not a model directory: " + WEIGHTS + " is missing");
        }
        Transformer model = new Transformer(ModelConfig.load(config), ctx);
        try {
            HfCheckpoint.load(weights, model.config(), model.params());
        } catch (IOException | RuntimeException e) {
            model.close();
            throw e;
        }
        return model;
    }
}
