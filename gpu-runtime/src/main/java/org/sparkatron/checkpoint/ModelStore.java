package org.sparkatron.checkpoint;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import org.sparkatron.device.Kernels;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.TensorParallel;
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

    /** Reads the config and weights of a model directory onto the given kernels. */
    public static Transformer load(Path dir, Kernels kernels) throws IOException {
        return load(dir, kernels, Precision.FP32);
    }

    /**
     * Reads a model directory onto the given (fp32) kernels, to compute in {@code precision}: the stored
     * weights become the fp32 master weights (see {@link Transformer#Transformer(ModelConfig, Kernels,
     * TensorParallel, Precision)}).
     */
    public static Transformer load(Path dir, Kernels kernels, Precision precision) throws IOException {
        Path config = dir.resolve(CONFIG);
        Path weights = dir.resolve(WEIGHTS);
        if (!Files.isRegularFile(config)) {
            throw new IllegalArgumentException(dir + " is not a model directory: " + CONFIG + " is missing");
        }
        if (!Files.isRegularFile(weights)) {
            throw new IllegalArgumentException(dir + " is not a model directory: " + WEIGHTS + " is missing");
        }
        Transformer model = new Transformer(ModelConfig.load(config), kernels, TensorParallel.none(), precision);
        HfCheckpoint.load(weights, model.config(), model.params());
        return model;
    }
}
