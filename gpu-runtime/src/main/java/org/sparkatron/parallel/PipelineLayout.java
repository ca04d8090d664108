package org.sparkatron.parallel;

import java.util.Arrays;

/**
 * Which layers each pipeline stage holds. The {@code L} layers are cut into {@code p * v} contiguous virtual
 * stages; virtual stage {@code k} lives on pipeline rank {@code k % p} as its model chunk {@code k / p}
 * (Megatron's interleaved assignment; {@code v = 1} is plain pipelining, {@code p = 1} the whole model).
 * Without interleaving the first and last stage may hold fewer layers than the others (Megatron's
 * {@code decoder_first_pipeline_num_layers} / {@code decoder_last_pipeline_num_layers}); the layers left
 * are split evenly over the other stages. Layouts that do not add up are refused naming the numbers.
 * Immutable.
 */
public final class PipelineLayout {
    private final int layers;
    private final int stages;
    private final int virtual;
    private final int[] starts; // virtual stage k holds layers [starts[k], starts[k + 1])

    private PipelineLayout(int layers, int stages, int virtual, int[] starts) {
        this.layers = layers;
        this.stages = stages;
        this.virtual = virtual;
        this.starts = starts;
    }

    /** No pipelining: one stage, one chunk, all layers. */
    public static PipelineLayout single(int layers) {
        return of(layers, 1, 1, -1, -1);
    }

    /**
     * @param firstLayers layers on the first stage, or -1 for an even split
     * @param lastLayers  layers on the last stage, or -1 for an even split
     */
    public static PipelineLayout of(int layers, int stages, int virtual, int firstLayers, int lastLayers) {
        if (stages < 1 || virtual < 1) {
            throw new IllegalArgumentException("pipeline size (" + stages + ") and virtual pipeline size (" + virtual
                    + ") must be >= 1");
        }
        if (stages * virtual > layers) {
            throw new IllegalArgumentException("pipeline size " + stages + (virtual > 1 ? " x virtual " + virtual : "")
                    + " is larger than the " + layers + " layers: every stage needs at least one layer");
        }
        if (virtual > 1 && stages == 1) {
            throw new IllegalArgumentException("a virtual pipeline size (" + virtual + ") needs a pipeline size > 1");
        }
        boolean uneven = firstLayers >= 0 || lastLayers >= 0;
        if (uneven && virtual > 1) {
            throw new IllegalArgumentException("uneven first/last stages (decoder_first/last_pipeline_num_layers) are not "
                    + "supported with a virtual pipeline size > 1");
        }
        if (uneven && stages == 1) {
            throw new IllegalArgumentException("decoder_first/last_pipeline_num_layers need a pipeline size > 1");
        }
        int[] counts = new int[stages * virtual];
        if (!uneven) {
            if (layers % (stages * virtual) != 0) {
                throw new IllegalArgumentException(layers + " layers are not divisible by pipeline size " + stages
                        + (virtual > 1 ? " x virtual pipeline size " + virtual + " = " + stages * virtual : "")
                        + (virtual == 1 ? " (or set decoder_first/last_pipeline_num_layers)" : ""));
            }
            Arrays.fill(counts, layers / (stages * virtual));
        } else {
            int fixed = Math.max(0, firstLayers) + Math.max(0, lastLayers);
            int others = stages - (firstLayers >= 0 ? 1 : 0) - (lastLayers >= 0 ? 1 : 0);
            int rest = layers - fixed;
            if (firstLayers == 0 || lastLayers == 0 || rest < 0 || (others == 0 && rest != 0)
                    || (others > 0 && (rest % others != 0 || rest / others == 0))) {
                throw new IllegalArgumentException("first stage " + (firstLayers >= 0 ? firstLayers : "(even)") + " + last stage "
                        + (lastLayers >= 0 ? lastLayers : "(even)") + " layers leave " + rest + " of the " + layers
                        + " layers for " + others + " other stage(s): they must split evenly, at least one layer each");
            }
            int each = others == 0 ? 0 : rest / others;
            Arrays.fill(counts, each);
            if (firstLayers >= 0) {
                counts[0] = firstLayers;
            }
            if (lastLayers >= 0) {
                counts[stages - 1] = lastLayers;
            }
        }
        int[] starts = new int[counts.length + 1];
        for (int k = 0; k < counts.length; k++) {
            starts[k + 1] = starts[k] + counts[k];
        }
        return new PipelineLayout(layers, stages, virtual, starts);
    }

    public int layers() {
        return layers;
    }

    public int stages() {
        return stages;
    }

    public int virtualStages() {
        return virtual;
    }

    /** The virtual stage of {@code stage}'s model chunk {@code chunk}. */
    public int virtualStage(int stage, int chunk) {
        return chunk * stages + stage;
    }

    /** The first layer of stage {@code stage}'s chunk {@code chunk}. */
    public int firstLayer(int stage, int chunk) {
        return starts[virtualStage(stage, chunk)];
    }

    /** One past the last layer of stage {@code stage}'s chunk {@code chunk}. */
    public int endLayer(int stage, int chunk) {
        return starts[virtualStage(stage, chunk) + 1];
    }

    /** Whether {@code stage}'s chunk {@code chunk} starts the model (holds the embedding). */
    public boolean isFirst(int stage, int chunk) {
        return virtualStage(stage, chunk) == 0;
    }

    /** Whether {@code stage}'s chunk {@code chunk} ends the model (final norm, output layer, loss). */
    public boolean isLast(int stage, int chunk) {
        return virtualStage(stage, chunk) == stages * virtual - 1;
    }

    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder();
        for (int s = 0; s < stages; s++) {
            sb.append(s == 0 ? "" : ", ").append("stage ").append(s).append(':');
            for (int c = 0; c < virtual; c++) {
                sb.append(" [").append(firstLayer(s, c)).append(", ").append(endLayer(s, c)).append(')');
            }
        }
        return sb.toString();
    }
}
