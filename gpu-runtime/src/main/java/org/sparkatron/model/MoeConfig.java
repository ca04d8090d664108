package org.sparkatron.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

/**
 * The mixture-of-experts part of a model's shape (docs/moe.md): how many routed experts each MoE layer has
 * and how many a token uses, how the router scores them, which layers are MoE, an optional shared expert,
 * capacity and the load-balancing losses. {@link #NONE} is a dense model.
 *
 * <p>Router ({@code scoreFunction}): {@code softmax} scores, top-k, renormalised over the k when
 * {@code normTopK} (Mixtral, which equals Megatron's default top-k-then-softmax); or {@code sigmoid} scores,
 * top-k, normalised over the k when {@code normTopK} (DeepSeek-V3); the k weights are then multiplied by
 * {@code topKScale}. Layer i is an MoE layer when {@code i % layerFreq == 0} (Megatron's
 * {@code moe_layer_freq}); the others are dense with {@code denseFfn} columns.
 *
 * <p>Capacity: {@code capacityFactor <= 0} is dropless. Otherwise each expert takes at most
 * {@code ceil(tokens * topK / experts * capacityFactor)} of a rank's token assignments, keeping those with
 * the highest routing weight (Megatron's {@code probs} drop policy); with {@code padToCapacity} every
 * expert's block is padded to exactly that many rows (no host synchronisation under expert parallelism).
 *
 * <p>Losses: Megatron's per-layer auxiliary load-balancing loss times {@code auxLossCoeff} and router
 * z-loss times {@code zLossCoeff}, both added to the training objective and reported separately.
 */
public record MoeConfig(int experts, int topK, int expertFfn, boolean sigmoid, boolean normTopK, float topKScale,
                        int layerFreq, int denseFfn, int sharedFfn, double capacityFactor, boolean padToCapacity,
                        double auxLossCoeff, double zLossCoeff) {
    /** A dense model. */
    public static final MoeConfig NONE = new MoeConfig(0, 0, 0, false, true, 1f, 1, 0, 0, 0, false, 0, 0);

    public MoeConfig {
        if (experts != 0) {
            check(experts > 0, "num_local_experts must be positive, got " + experts);
            check(topK >= 1 && topK <= experts, "num_experts_per_tok " + topK + " must be in [1, num_local_experts = " + experts + "]");
            check(expertFfn > 0, "the experts' intermediate_size must be positive, got " + expertFfn);
            check(layerFreq >= 1, "moe_layer_freq must be >= 1, got " + layerFreq);
            check(denseFfn > 0 || layerFreq == 1, "dense layers between MoE layers need a positive dense_intermediate_size");
            check(sharedFfn >= 0, "shared_expert_intermediate_size must be >= 0, got " + sharedFfn);
            check(topKScale > 0, "routed_scaling_factor must be > 0, got " + topKScale);
            check(auxLossCoeff >= 0 && zLossCoeff >= 0, "load-balancing coefficients must be >= 0");
            check(!padToCapacity || capacityFactor > 0, "moe_pad_expert_input_to_capacity needs moe_expert_capacity_factor > 0");
        }
    }

    private static void check(boolean ok, String message) {
        if (!ok) {
            throw new IllegalArgumentException(message);
        }
    }

    public boolean enabled() {
        return experts > 0;
    }

    /** Whether layer {@code i} has the MoE MLP. */
    public boolean isMoeLayer(int i) {
        return enabled() && i % layerFreq == 0;
    }

    /** Whether tokens over an expert's capacity are dropped. */
    public boolean dropsTokens() {
        return capacityFactor > 0;
    }

    /** Megatron's {@code get_capacity(n * k, E, factor)}: the assignments one expert takes from {@code tokens} tokens. */
    public int capacity(long tokens) {
        return (int) Math.ceil((double) tokens * topK / experts * capacityFactor);
    }

    /**
     * Reads the MoE keys of a Hugging Face Mixtral-style config.json ({@code model_type} "mixtral"): HF's
     * {@code num_local_experts}, {@code num_experts_per_tok}, {@code intermediate_size} (each expert's),
     * {@code router_aux_loss_coef}; DeepSeek/Qwen's {@code scoring_func}, {@code norm_topk_prob},
     * {@code routed_scaling_factor}, {@code shared_expert_intermediate_size}; and Megatron's
     * {@code moe_layer_freq}, {@code moe_expert_capacity_factor}, {@code moe_pad_expert_input_to_capacity},
     * {@code moe_aux_loss_coeff} (preferred over {@code router_aux_loss_coef}), {@code moe_z_loss_coeff}.
     */
    static MoeConfig fromJson(JsonNode root, int expertFfn) {
        String score = root.path("scoring_func").asText("softmax");
        if (!score.equals("softmax") && !score.equals("sigmoid")) {
            throw new IllegalArgumentException("scoring_func '" + score + "' is not supported (softmax or sigmoid)");
        }
        if (root.path("router_jitter_noise").asDouble(0) != 0) {
            throw new IllegalArgumentException("router_jitter_noise " + root.get("router_jitter_noise") + " is not supported (only 0)");
        }
        int freq = root.hasNonNull("moe_layer_freq") ? intKey(root, "moe_layer_freq") : 1;
        double aux = root.hasNonNull("moe_aux_loss_coeff") ? root.get("moe_aux_loss_coeff").asDouble()
                : root.path("router_aux_loss_coef").asDouble(0.001);
        double z = root.hasNonNull("moe_z_loss_coeff") ? root.get("moe_z_loss_coeff").asDouble()
                : root.path("router_z_loss_coef").asDouble(0);
        return new MoeConfig(intKey(root, "num_local_experts"), intKey(root, "num_experts_per_tok"), expertFfn,
                score.equals("sigmoid"), root.path("norm_topk_prob").asBoolean(true),
                (float) root.path("routed_scaling_factor").asDouble(1.0), freq,
                root.hasNonNull("dense_intermediate_size") ? intKey(root, "dense_intermediate_size") : expertFfn,
                root.hasNonNull("shared_expert_intermediate_size") ? intKey(root, "shared_expert_intermediate_size") : 0,
                root.path("moe_expert_capacity_factor").asDouble(0), root.path("moe_pad_expert_input_to_capacity").asBoolean(false),
                aux, z);
    }

    private static int intKey(JsonNode root, String key) {
        JsonNode n = root.get(key);
        if (n == null || n.isNull()) {
            throw new IllegalArgumentException("missing required key '" + key + "'");
        }
        if (!n.isIntegralNumber() || !n.canConvertToInt()) {
            throw new IllegalArgumentException("key '" + key + "' must be an integer, got " + n);
        }
        return n.asInt();
    }

    /** Writes the keys {@link #fromJson} reads (HF's Mixtral keys plus ours where they differ from the defaults). */
    void toJson(ObjectNode o) {
        o.put("num_local_experts", experts).put("num_experts_per_tok", topK).put("router_aux_loss_coef", auxLossCoeff)
                .put("moe_aux_loss_coeff", auxLossCoeff).put("output_router_logits", false).put("router_jitter_noise", 0.0);
        if (zLossCoeff != 0) {
            o.put("moe_z_loss_coeff", zLossCoeff);
        }
        if (sigmoid) {
            o.put("scoring_func", "sigmoid");
        }
        if (!normTopK) {
            o.put("norm_topk_prob", false);
        }
        if (topKScale != 1f) {
            o.put("routed_scaling_factor", topKScale);
        }
        if (layerFreq != 1) {
            o.put("moe_layer_freq", layerFreq).put("dense_intermediate_size", denseFfn);
        }
        if (sharedFfn > 0) {
            o.put("shared_expert_intermediate_size", sharedFfn);
        }
        if (capacityFactor > 0) {
            o.put("moe_expert_capacity_factor", capacityFactor);
            if (padToCapacity) {
                o.put("moe_pad_expert_input_to_capacity", true);
            }
        }
    }
}
