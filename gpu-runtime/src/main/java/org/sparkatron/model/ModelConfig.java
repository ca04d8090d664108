package org.sparkatron.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Set;

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
        if ((long) (heads + 2L * kvHeads) * (hidden / heads) > Integer.MAX_VALUE || 2L * ffn > Integer.MAX_VALUE
                || (long) vocab + vocabMultiple > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("sizes too large for 32-bit dimensions: hidden " + hidden + ", heads " + heads
                    + ", key/value heads " + kvHeads + ", MLP hidden " + ffn + ", vocab " + vocab);
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

    /**
     * Keys of Hugging Face's {@code PretrainedConfig} that every config.json may carry and that do not
     * change the model computed here (generation settings, token ids, labels, hub metadata): accepted and
     * ignored. Any key outside these and the family's own is refused, so a typo is never silently ignored.
     */
    static final Set<String> HF_COMMON = Set.of("architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
            "_name_or_path", "_commit_hash", "_attn_implementation", "bos_token_id", "eos_token_id", "pad_token_id",
            "sep_token_id", "decoder_start_token_id", "initializer_range", "use_cache", "return_dict", "output_hidden_states",
            "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward",
            "is_decoder", "is_encoder_decoder", "tie_encoder_decoder", "finetuning_task", "id2label", "label2id", "num_labels",
            "tokenizer_class", "prefix", "problem_type", "task_specific_params", "max_length", "min_length", "do_sample",
            "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
            "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
            "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
            "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
            "gradient_checkpointing", "_num_labels", "sparkatron_vocab_multiple");
    /** GPT-2's keys: read, checked against what is implemented, or (dropout, summary head) ignored. */
    static final Set<String> GPT2_KEYS = Set.of("n_layer", "n_embd", "n_head", "n_positions", "n_ctx", "vocab_size",
            "layer_norm_epsilon", "n_inner", "activation_function", "tie_word_embeddings", "resid_pdrop", "embd_pdrop",
            "attn_pdrop", "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
            "summary_first_dropout", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
            "add_cross_attention", "n_special", "predict_special_tokens", "output_past",
            "hidden_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings");
    /** GPT2Config's attribute_map: these names set the GPT-2 keys in transformers too. */
    private static final String[][] GPT2_ALIASES = {{"hidden_size", "n_embd"}, {"num_attention_heads", "n_head"},
        {"num_hidden_layers", "n_layer"}, {"max_position_embeddings", "n_positions"}};
    /** Llama's keys: read, checked against what is implemented, or (dropout, pretraining_tp) ignored. */
    static final Set<String> LLAMA_KEYS = Set.of("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
            "hidden_act", "attention_bias", "mlp_bias", "rope_scaling", "head_dim", "attention_dropout", "pretraining_tp");

    /**
     * Mixtral's keys beside Llama's (Hugging Face's MixtralConfig), and the MoE settings read from the same
     * config ({@link MoeConfig}: Megatron's names for what Mixtral's config cannot say).
     */
    static final Set<String> MIXTRAL_KEYS = Set.copyOf(MoeConfigJson.KEYS);

    public static ModelConfig load(Path configJson) throws IOException {
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(configJson);
        } catch (IOException e) {
            throw new IOException("cannot read model config " + configJson + ": " + e, e);
        }
        try {
            return fromJson(ConfigJson.parse(bytes, configJson.toString()));
        } catch (IllegalArgumentException e) {
            String m = e.getMessage();
            throw new IllegalArgumentException(m.startsWith(configJson.toString()) ? m : configJson + ": " + m, e);
        }
    }

    /**
     * Reads a config.json object strictly (see {@link ConfigJson}): unknown keys, values of the wrong type,
     * non-finite or non-positive sizes, epsilons and RoPE bases, and sizes whose products overflow 32 bits
     * are refused with the key and value.
     */
    public static ModelConfig fromJson(JsonNode root) {
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException("model config must be a JSON object");
        }
        String type = ConfigJson.string(root, "model_type", "");
        switch (type) {
            case "gpt2": {
                ConfigJson.refuseUnknown(root, union(HF_COMMON, GPT2_KEYS), GPT2_KEYS, "a gpt2 config");
                root = resolveAliases(root);
                int embd = ConfigJson.requiredInt(root, "n_embd");
                String act = ConfigJson.string(root, "activation_function", "gelu_new");
                if (!act.equals("gelu_new") && !act.equals("gelu_pytorch_tanh")) {
                    throw new IllegalArgumentException("gpt2 activation_function '" + act
                            + "' is not supported (only the tanh GELU: gelu_new / gelu_pytorch_tanh)");
                }
                int positions = root.has("n_positions") ? ConfigJson.requiredInt(root, "n_positions") : ConfigJson.requiredInt(root, "n_ctx");
                long inner = root.hasNonNull("n_inner") ? ConfigJson.requiredInt(root, "n_inner") : 4L * embd;
                if (inner > Integer.MAX_VALUE) {
                    throw new IllegalArgumentException("MLP hidden size 4 x n_embd = " + inner + " does not fit in 32 bits (n_embd " + embd + ")");
                }
                if (!ConfigJson.bool(root, "tie_word_embeddings", true)) {
                    throw new IllegalArgumentException("gpt2 models always tie the output to the input embedding (tie_word_embeddings=false is not supported)");
                }
                if (!ConfigJson.bool(root, "scale_attn_weights", true) || ConfigJson.bool(root, "scale_attn_by_inverse_layer_idx", false)
                        || ConfigJson.bool(root, "add_cross_attention", false)) {
                    throw new IllegalArgumentException("gpt2 scale_attn_weights=false, scale_attn_by_inverse_layer_idx=true and "
                            + "add_cross_attention=true are not supported");
                }
                int nHead = ConfigJson.requiredInt(root, "n_head");
                return new ModelConfig(Family.GPT2, ConfigJson.requiredInt(root, "n_layer"), embd, nHead, nHead, (int) inner,
                        ConfigJson.requiredInt(root, "vocab_size"), positions,
                        epsilon(root, "layer_norm_epsilon", 1e-5), 0, true, vocabMultiple(root));
            }
            case "llama":
            case "mixtral": {
                boolean mixtral = type.equals("mixtral");
                Set<String> own = mixtral ? union(LLAMA_KEYS, MIXTRAL_KEYS) : LLAMA_KEYS;
                ConfigJson.refuseUnknown(root, union(HF_COMMON, own), own, mixtral ? "a mixtral config" : "a llama config");
                int hiddenSize = ConfigJson.requiredInt(root, "hidden_size");
                int nHeads = ConfigJson.requiredInt(root, "num_attention_heads");
                String act = ConfigJson.string(root, "hidden_act", "silu");
                if (!act.equals("silu")) {
                    throw new IllegalArgumentException("llama hidden_act '" + act + "' is not supported (only silu)");
                }
                if (ConfigJson.bool(root, "attention_bias", false) || ConfigJson.bool(root, "mlp_bias", false)) {
                    throw new IllegalArgumentException("llama attention_bias / mlp_bias = true is not supported");
                }
                if (root.hasNonNull("rope_scaling")) {
                    throw new IllegalArgumentException("llama rope_scaling " + root.get("rope_scaling") + " is not supported");
                }
                if (root.hasNonNull("head_dim") && (long) ConfigJson.requiredInt(root, "head_dim") * nHeads != hiddenSize) {
                    throw new IllegalArgumentException("llama head_dim " + root.get("head_dim").asInt()
                            + " x num_attention_heads " + nHeads + " != hidden_size " + hiddenSize + " (not supported)");
                }
                if (mixtral && root.hasNonNull("sliding_window")) {
                    throw new IllegalArgumentException("mixtral sliding_window " + root.get("sliding_window")
                            + " is not supported (only null: full causal attention)");
                }
                double theta = ConfigJson.number(root, "rope_theta", 10000.0);
                if (!(theta > 0)) {
                    throw new IllegalArgumentException("key 'rope_theta' must be > 0, got " + root.get("rope_theta"));
                }
                MoeConfig moe = mixtral ? MoeConfig.fromJson(root, ConfigJson.requiredInt(root, "intermediate_size")) : MoeConfig.NONE;
                return new ModelConfig(Family.LLAMA, ConfigJson.requiredInt(root, "num_hidden_layers"), hiddenSize, nHeads,
                        ConfigJson.optionalInt(root, "num_key_value_heads", nHeads),
                        moe.enabled() ? moe.denseFfn() : ConfigJson.requiredInt(root, "intermediate_size"),
                        ConfigJson.requiredInt(root, "vocab_size"), ConfigJson.requiredInt(root, "max_position_embeddings"),
                        epsilon(root, "rms_norm_eps", 1e-6), theta,
                        ConfigJson.bool(root, "tie_word_embeddings", false), vocabMultiple(root), moe);
            }
            default:
                throw new IllegalArgumentException("unsupported model_type '" + type + "' (supported: gpt2, llama, mixtral)");
        }
    }

    /** GPT-2's keys set through an alias (as transformers' attribute_map does); an alias that disagrees is refused. */
    private static JsonNode resolveAliases(JsonNode root) {
        ObjectNode o = ((ObjectNode) root).deepCopy();
        for (String[] a : GPT2_ALIASES) {
            JsonNode alias = o.remove(a[0]);
            if (alias == null) {
                continue;
            }
            if (o.has(a[1]) && !o.get(a[1]).equals(alias)) {
                throw new IllegalArgumentException("gpt2 keys '" + a[0] + "' (" + alias + ") and '" + a[1] + "' (" + o.get(a[1])
                        + ") disagree: give one of them");
            }
            o.set(a[1], alias);
        }
        return o;
    }

    /** A norm epsilon: a finite number that stays > 0 in float. */
    private static float epsilon(JsonNode root, String key, double dflt) {
        double v = ConfigJson.number(root, key, dflt);
        if (!(v > 0) || !((float) v > 0) || !Float.isFinite((float) v)) {
            throw new IllegalArgumentException("key '" + key + "' must be a positive number within float range, got " + root.get(key));
        }
        return (float) v;
    }

    private static Set<String> union(Set<String> a, Set<String> b) {
        Set<String> s = new java.util.HashSet<>(a);
        s.addAll(b);
        return s;
    }

    private static int vocabMultiple(JsonNode root) {
        return ConfigJson.optionalInt(root, "sparkatron_vocab_multiple", DEFAULT_VOCAB_MULTIPLE);
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
