package org.sparkatron.precision;

import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.function.Function;

/**
 * How {@code precision: fp8} trains (docs/precision.md): Megatron Core's FP8 options with their names and
 * defaults ({@code --fp8-format}, {@code --fp8-recipe}, {@code --fp8-margin}, {@code --fp8-amax-history-len},
 * {@code --fp8-amax-compute-algo}, {@code --first-last-layers-bf16}, {@code --num-layers-at-start-in-bf16},
 * {@code --num-layers-at-end-in-bf16}), which Megatron hands to Transformer Engine.
 *
 * <ul>
 *   <li>{@code format}: {@link Format#E4M3} for every FP8 tensor, or {@link Format#HYBRID} (the default):
 *       E4M3 for the forward operands (inputs and weights), E5M2 for the gradients.</li>
 *   <li>{@code scaling}: {@link Scaling#DELAYED} (Megatron's default {@code delayed}: each tensor's scale comes
 *       from the amaxes of earlier passes, reduced over the tensor- and data-parallel ranks) or
 *       {@link Scaling#TENSORWISE} ({@code tensorwise}, Transformer Engine's current scaling: the scale
 *       from this tensor's own amax).</li>
 *   <li>{@code margin} (0), {@code amaxHistoryLen} (1), {@code amaxComputeAlgo} ({@code most_recent}):
 *       delayed scaling's {@code scale = fp8Max / amax / 2^margin}, with amax the most recent one or the
 *       maximum over the last {@code amaxHistoryLen} passes.</li>
 *   <li>{@code firstLastLayersBf16} (false) with {@code layersAtStartInBf16} (1) and
 *       {@code layersAtEndInBf16} (1): keep those transformer layers' GEMMs in bf16.</li>
 * </ul>
 * Immutable and serializable (it travels in Spark's training config); validated on construction (a bad value
 * names its key).
 */
public record Fp8Recipe(Format format, Scaling scaling, int margin, int amaxHistoryLen, AmaxAlgo amaxComputeAlgo,
                        boolean firstLastLayersBf16, int layersAtStartInBf16, int layersAtEndInBf16) implements java.io.Serializable {
    /** Megatron's {@code --fp8-format}. */
    public enum Format {
        E4M3, HYBRID;

        /** The format of gradients ({@code dgrad} / {@code wgrad} GEMM operands). */
        public Fp8Format backward() {
            return this == HYBRID ? Fp8Format.E5M2 : Fp8Format.E4M3;
        }
    }

    /** Megatron's {@code --fp8-recipe} (the per-tensor ones). */
    public enum Scaling {
        DELAYED, TENSORWISE
    }

    /** Megatron's {@code --fp8-amax-compute-algo}. */
    public enum AmaxAlgo {
        MAX, MOST_RECENT
    }

    /** The option keys, as the Spark config spells them (the CLI uses dashes). */
    public static final String[] KEYS = {"fp8_format", "fp8_recipe", "fp8_margin", "fp8_amax_history_len",
        "fp8_amax_compute_algo", "first_last_layers_bf16", "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"};

    public Fp8Recipe {
        if (format == null || scaling == null || amaxComputeAlgo == null) {
            throw new IllegalArgumentException("fp8 recipe needs a format, a scaling recipe and an amax algorithm");
        }
        if (margin < 0) {
            throw new IllegalArgumentException("fp8_margin must be >= 0, got " + margin);
        }
        if (amaxHistoryLen < 1) {
            throw new IllegalArgumentException("fp8_amax_history_len must be >= 1, got " + amaxHistoryLen);
        }
        if (layersAtStartInBf16 < 0 || layersAtEndInBf16 < 0) {
            throw new IllegalArgumentException("num_layers_at_start_in_bf16 (" + layersAtStartInBf16
                    + ") and num_layers_at_end_in_bf16 (" + layersAtEndInBf16 + ") must be >= 0");
        }
    }

    /** Megatron's defaults: hybrid, delayed, margin 0, history 1, most_recent, every layer in FP8. */
    public static Fp8Recipe defaults() {
        return new Fp8Recipe(Format.HYBRID, Scaling.DELAYED, 0, 1, AmaxAlgo.MOST_RECENT, false, 1, 1);
    }

    /**
     * Reads the options from {@code get} (key -> value, or null where absent; keys as in {@link #KEYS}),
     * defaults for the absent ones. Bad values are refused naming the key and the choices.
     */
    public static Fp8Recipe parse(Function<String, String> get) {
        Fp8Recipe d = defaults();
        return new Fp8Recipe(
                choice(get, "fp8_format", d.format, Map.of("e4m3", Format.E4M3, "hybrid", Format.HYBRID)),
                choice(get, "fp8_recipe", d.scaling, Map.of("delayed", Scaling.DELAYED, "tensorwise", Scaling.TENSORWISE,
                        "current", Scaling.TENSORWISE)),
                integer(get, "fp8_margin", d.margin),
                integer(get, "fp8_amax_history_len", d.amaxHistoryLen),
                choice(get, "fp8_amax_compute_algo", d.amaxComputeAlgo, Map.of("max", AmaxAlgo.MAX, "most_recent", AmaxAlgo.MOST_RECENT)),
                bool(get, "first_last_layers_bf16", d.firstLastLayersBf16),
                integer(get, "num_layers_at_start_in_bf16", d.layersAtStartInBf16),
                integer(get, "num_layers_at_end_in_bf16", d.layersAtEndInBf16));
    }

    private static <T> T choice(Function<String, String> get, String key, T dflt, Map<String, T> choices) {
        String v = get.apply(key);
        if (v == null) {
            return dflt;
        }
        T t = choices.get(v.trim().toLowerCase(Locale.ROOT));
        if (t == null) {
            throw new IllegalArgumentException(key + " must be one of " + String.join(", ", new java.util.TreeSet<>(choices.keySet()))
                    + ", got '" + v + "'");
        }
        return t;
    }

    private static int integer(Function<String, String> get, String key, int dflt) {
        String v = get.apply(key);
        if (v == null) {
            return dflt;
        }
        try {
            return Integer.parseInt(v.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(key + " must be an integer, got '" + v + "'");
        }
    }

    private static boolean bool(Function<String, String> get, String key, boolean dflt) {
        String v = get.apply(key);
        if (v == null) {
            return dflt;
        }
        return switch (v.trim().toLowerCase(Locale.ROOT)) {
            case "true" -> true;
            case "false" -> false;
            default -> throw new IllegalArgumentException(key + " must be true or false, got '" + v + "'");
        };
    }

    /** Whether transformer layer {@code layer} of {@code layers} runs its GEMMs in FP8 (else bf16). */
    public boolean fp8Layer(int layer, int layers) {
        return !firstLastLayersBf16 || (layer >= layersAtStartInBf16 && layer < layers - layersAtEndInBf16);
    }

    /** Refuses a layer split that leaves no layer of a {@code layers}-layer model in FP8. */
    public void validateFor(int layers) {
        if (firstLastLayersBf16 && layersAtStartInBf16 + layersAtEndInBf16 >= layers) {
            throw new IllegalArgumentException("first_last_layers_bf16 keeps " + layersAtStartInBf16 + " + " + layersAtEndInBf16
                    + " of the model's " + layers + " layers in bf16: no layer is left in fp8");
        }
    }

    /** The options as key -> value strings, keys as in {@link #KEYS} (for configs, logs and checkpoints). */
    public Map<String, String> asMap() {
        Map<String, String> m = new LinkedHashMap<>();
        m.put("fp8_format", format.name().toLowerCase(Locale.ROOT));
        m.put("fp8_recipe", scaling.name().toLowerCase(Locale.ROOT));
        m.put("fp8_margin", Integer.toString(margin));
        m.put("fp8_amax_history_len", Integer.toString(amaxHistoryLen));
        m.put("fp8_amax_compute_algo", amaxComputeAlgo.name().toLowerCase(Locale.ROOT));
        m.put("first_last_layers_bf16", Boolean.toString(firstLastLayersBf16));
        m.put("num_layers_at_start_in_bf16", Integer.toString(layersAtStartInBf16));
        m.put("num_layers_at_end_in_bf16", Integer.toString(layersAtEndInBf16));
        return m;
    }

    /**
     * Why a CUDA GPU of compute capability {@code major.minor} cannot train in FP8, or null when it can: FP8
     * tensor cores start with Ada (sm_89) and Hopper (sm_90), as Transformer Engine's {@code check_fp8_support}.
     */
    public static String unsupportedOn(String device, String gpuName, int major, int minor) {
        if (major > 8 || (major == 8 && minor >= 9)) {
            return null;
        }
        return "precision fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); " + device + " (" + gpuName
                + ") is sm_" + major + minor + ": use precision bf16";
    }
}
