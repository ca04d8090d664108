package org.sparkatron.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * A decoder-only transformer's shape, read from a Hugging Face {@code config.json}. Two families:
 * GPT-2 (learned positions, LayerNorm, GELU-tanh, biases, tied output) and Llama (RoPE, RMSNorm, SwiGLU,
 * no biases, grouped-query attention, tied or untied output), the latter optionally with mixture-of-experts
 * MLPs ({@link MoeConfig}; Hugging Face's {@code mixtral} model type).
 *
 * <p>The vocabulary is padded internally to a multiple of {@code vocabMultiple} (Megatron's
 * {@code make-vocab-size-divisible-by}, 128 by default) so GEMMs and vocab-parallel splits are even;
 * padded ids are never valid tokens or targets and never appear in saved files.
 */
public record ModelConfig(
        Family family,
        int layers,
        int hidden,
        int heads,
        int kvHeads,
        int ffnHidden,
        int vocabSize,
        int maxPositions,
        float normEps,
        double ropeTheta,
        boolean tiedEmbeddings,
        int vocabMultiple,
        MoeConfig moe) {

    /** Model families; each fixes norm, activation, positions and biases. */
    public enum Family {
        GPT2, LLAMA;

        public boolean hasBiases() {
            return this == GPT2;
        }

        public boolean usesRope() {
            return this == LLAMA;
        }
    }

    public static final int DEFAULT_VOCAB_MULTIPLE = 128;

    public ModelConfig {
        validate(family, layers, hidden, heads, kvHeads, ffnHidden, vocabSize, maxPositions, normEps, vocabMultiple);
        if (moe == null) {
            moe = MoeConfig.NONE;
        }
        if (moe.enabled() && family != Family.LLAMA) {
            throw new IllegalArgumentException("mixture-of-experts layers are implemented for the Llama family (Mixtral) only");
        }
    }

    /** A dense model. */
    public ModelConfig(Family family, int layers, int hidden, int heads, int kvHeads, int ffnHidden, int vocabSize,
                       int maxPositions, float normEps, double ropeTheta, boolean tiedEmbeddings, int vocabMultiple) {
        this(family, layers, hidden, heads, kvHeads, ffnHidden, vocabSize, maxPositions, normEps, ropeTheta, tiedEmbeddings,
                vocabMultiple, MoeConfig.NONE);
    }

    /** Whether any layer is a mixture of experts. */
    public boolean isMoe() {
        return moe.enabled();
    }

    /** This config with another MoE part (tests and tools). */
    public ModelConfig withMoe(MoeConfig other) {
        return new ModelConfig(family, layers, hidden, heads, kvHeads, other.enabled() ? other.denseFfn() : ffnHidden, vocabSize,
                maxPositions, normEps, ropeTheta, tiedEmbeddings, vocabMultiple, other);
    }

    public int headDim() {
        return hidden / heads;
    }

    /** Width of the fused QKV projection's output: q heads, then k heads, then v heads. */
    public int qkvWidth() {
        return (heads + 2 * kvHeads) * headDim();
    }

    /** The vocabulary rounded up to a multiple of {@link #vocabMultiple()}. */
    public int paddedVocab() {
        return paddedVocab(1);
    }

    /**
     * The vocabulary padded for a tensor-parallel group of {@code tp} ranks: rounded up to a multiple of
     * {@code vocabMultiple * tp} (Megatron's rule), so every rank's slice is a multiple of
     * {@code vocabMultiple}. Equals {@link #paddedVocab()} for tp = 1.
     */
    public int paddedVocab(int tp) {
        long m = (long) vocabMultiple * tp;
        return Math.toIntExact((vocabSize + m - 1) / m * m);
    }

    private static void validate(Family family, int layers, int hidden, int heads, int kvHeads, int ffn, int vocab,
                                 int maxPos, float eps, int vocabMultiple) {
        positive("number of layers", layers);
        positive("hidden size", hidden);
        positive("number of attention heads", heads);
        positive("number of key/value heads", kvHeads);
        positive("MLP hidden size", ffn);
        positive("vocab_size", vocab);
        positive("max positions", maxPos);
        positive("vocab padding multiple", vocabMultiple);
        if (hidden % heads != 0) {
            throw new IllegalArgumentException("hidden size " + hidden + " is not divisible by the number of attention heads " + heads);
        }
        if (heads % kvHeads != 0) {
            throw new IllegalArgumentException("number of attention heads " + heads
                    + " is not divisible by the number of key/value heads " + kvHeads);
        }
        if (family.usesRope() && (hidden / heads) % 2 != 0) {
            throw new IllegalArgumentException("rotary embeddings need an even head dimension, got " + hidden / heads);
        }
        if (!(eps > 0)) {
            throw new IllegalArgumentException("normalization epsilon must be > 0, got " + eps);
        }
    }

    private static void positive(String what, int v) {
        if (v <= 0) {
            throw new IllegalArgumentException(what + " must be positive, got " + v);
        }
    }

    // ---------------------------------------------------------------- Hugging Face config.json

    private static final ObjectMapper JSON = new ObjectMapper();

    public static ModelConfig load(Path configJson) throws IOException {
        JsonNode root;
        try {
            root = JSON.readTree(Files.readAllBytes(configJson));
        } catch (IOException e) {
            throw new IOException("cannot read model config " + configJson + ": " + e.getMessage(), e);
        }
        try {
            return fromJson(root);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException(configJson + ": " + e.getMessage(), e);
        }
    }

    public static ModelConfig fromJson(JsonNode root) {
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException("model config must be a JSON object");
        }
        String type = root.path("model_type").asText("");
        switch (type) {
            case "gpt2": {
                int embd = requireInt(root, "n_embd");
                String act = root.path("activation_function").asText("gelu_new");
                if (!act.equals("gelu_new") && !act.equals("gelu_pytorch_tanh")) {
                    throw new IllegalArgumentException("gpt2 activation_function '" + act
                            + "' is not supported (only the tanh GELU: gelu_new / gelu_pytorch_tanh)");
                }
                int positions = root.has("n_positions") ? requireInt(root, "n_positions") : requireInt(root, "n_ctx");
                int inner = root.hasNonNull("n_inner") ? requireInt(root, "n_inner") : 4 * embd;
                if (root.has("tie_word_embeddings") && !root.get("tie_word_embeddings").asBoolean()) {
                    throw new IllegalArgumentException("gpt2 models always tie the output to the input embedding (tie_word_embeddings=false is not supported)");
                }
                int nHead = requireInt(root, "n_head");
                return new ModelConfig(Family.GPT2, requireInt(root, "n_layer"), embd, nHead, nHead, inner,
                        requireInt(root, "vocab_size"), positions,
                        (float) root.path("layer_norm_epsilon").asDouble(1e-5), 0, true, vocabMultiple(root));
            }
            case "llama":
            case "mixtral": {
                int hiddenSize = requireInt(root, "hidden_size");
                int nHeads = requireInt(root, "num_attention_heads");
                String act = root.path("hidden_act").asText("silu");
                if (!act.equals("silu")) {
                    throw new IllegalArgumentException("llama hidden_act '" + act + "' is not supported (only silu)");
                }
                if (root.path("attention_bias").asBoolean(false) || root.path("mlp_bias").asBoolean(false)) {
                    throw new IllegalArgumentException("llama attention_bias / mlp_bias = true is not supported");
                }
                if (root.hasNonNull("rope_scaling")) {
                    throw new IllegalArgumentException("llama rope_scaling " + root.get("rope_scaling") + " is not supported");
                }
                if (root.hasNonNull("head_dim") && root.get("head_dim").asInt() * nHeads != hiddenSize) {
                    throw new IllegalArgumentException("llama head_dim " + root.get("head_dim").asInt()
                            + " x num_attention_heads " + nHeads + " != hidden_size " + hiddenSize + " (not supported)");
                }
                if (type.equals("mixtral") && root.hasNonNull("sliding_window")) {
                    throw new IllegalArgumentException("mixtral sliding_window " + root.get("sliding_window")
                            + " is not supported (only null: full causal attention)");
                }
                MoeConfig moe = type.equals("mixtral") ? MoeConfig.fromJson(root, requireInt(root, "intermediate_size")) : MoeConfig.NONE;
                return new ModelConfig(Family.LLAMA, requireInt(root, "num_hidden_layers"), hiddenSize, nHeads,
                        root.hasNonNull("num_key_value_heads") ? requireInt(root, "num_key_value_heads") : nHeads,
                        moe.enabled() ? moe.denseFfn() : requireInt(root, "intermediate_size"), requireInt(root, "vocab_size"),
                        requireInt(root, "max_position_embeddings"),
                        (float) root.path("rms_norm_eps").asDouble(1e-6), root.path("rope_theta").asDouble(10000.0),
                        root.path("tie_word_embeddings").asBoolean(false), vocabMultiple(root), moe);
            }
            default:
                throw new IllegalArgumentException("unsupported model_type '" + type + "' (supported: gpt2, llama, mixtral)");
        }
    }

    private static int vocabMultiple(JsonNode root) {
        return root.hasNonNull("sparkatron_vocab_multiple") ? requireInt(root, "sparkatron_vocab_multiple") : DEFAULT_VOCAB_MULTIPLE;
    }

    private static int requireInt(JsonNode root, String key) {
        JsonNode n = root.get(key);
        if (n == null || n.isNull()) {
            throw new IllegalArgumentException("missing required key '" + key + "'");
        }
        if (!n.canConvertToInt() || !n.isIntegralNumber()) {
            throw new IllegalArgumentException("key '" + key + "' must be an integer, got " + n);
        }
        return n.asInt();
    }

    /** This config as a Hugging Face config.json object (what {@link #fromJson} reads back). */
    public ObjectNode toJson() {
        ObjectNode o = JSON.createObjectNode();
        if (family == Family.GPT2) {
            o.put("model_type", "gpt2");
            o.putArray("architectures").add("GPT2LMHeadModel");
            o.put("n_layer", layers).put("n_embd", hidden).put("n_head", heads).put("n_positions", maxPositions)
                    .put("n_ctx", maxPositions).put("vocab_size", vocabSize).put("layer_norm_epsilon", normEps)
                    .put("activation_function", "gelu_new");
            if (ffnHidden != 4 * hidden) {
                o.put("n_inner", ffnHidden);
            }
        } else {
            o.put("model_type", moe.enabled() ? "mixtral" : "llama");
            o.putArray("architectures").add(moe.enabled() ? "MixtralForCausalLM" : "LlamaForCausalLM");
            o.put("num_hidden_layers", layers).put("hidden_size", hidden).put("num_attention_heads", heads)
                    .put("num_key_value_heads", kvHeads).put("intermediate_size", moe.enabled() ? moe.expertFfn() : ffnHidden)
                    .put("vocab_size", vocabSize)
                    .put("max_position_embeddings", maxPositions).put("rms_norm_eps", normEps).put("rope_theta", ropeTheta)
                    .put("tie_word_embeddings", tiedEmbeddings).put("hidden_act", "silu");
        }
        if (moe.enabled()) {
            moe.toJson(o);
            o.putNull("sliding_window");
        }
        if (vocabMultiple != DEFAULT_VOCAB_MULTIPLE) {
            o.put("sparkatron_vocab_multiple", vocabMultiple);
        }
        return o;
    }
}
