package org.sparkatron.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.List;

/**
 * The mixture-of-experts part of a model's shape (docs/moe.md): how many routed experts each MoE layer has
 * and how many a token uses, how the router scores them, which layers are MoE, an optional shared expert,
 * capacity and the load-balancing losses. {@link #NONE} is a dense model.
 *
 * <p>Router ({@code sigmoid}): {@code softmax} scores, top-k, renormalised over the k when {@code normTopK}
 * (Mixtral, which equals Megatron's default top-k-then-softmax; {@code normTopK} false is Megatron's
 * {@code moe_router_pre_softmax}); or {@code sigmoid} scores, top-k, normalised over the k when {@code normTopK}
 * (DeepSeek-V3, and always in Megatron's sigmoid router); the k weights are then multiplied by {@code topKScale}
 * (Megatron's {@code moe_router_topk_scaling_factor}). With {@code expertBias} (sigmoid only; Megatron's
 * {@code moe_router_enable_expert_bias}, DeepSeek-V3's aux-loss-free balancing) a per-expert bias is added to
 * the scores for choosing the k experts only, and after every step moves by {@code biasUpdateRate} towards
 * balance: {@code bias_e += rate * sign(mean_count - count_e)} over the step's global token counts.
 * {@code jitterEps} (Megatron's {@code moe_input_jitter_eps}) is always 0 for now: the config reader refuses
 * other values, as router input jitter is not implemented.
 *
 * <p>Layers: layer i is an MoE layer when {@code layerPattern} (if not empty) says so, else when
 * {@code i % layerFreq == 0} (Megatron's {@code moe_layer_freq}: an integer or a per-layer 0/1 list); the others
 * are dense with {@code denseFfn} columns. A shared expert of {@code sharedFfn} columns (0: none) sees every token.
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
                        int layerFreq, List<Boolean> layerPattern, int denseFfn, int sharedFfn, double capacityFactor,
                        boolean padToCapacity, double auxLossCoeff, double zLossCoeff, boolean expertBias,
                        float biasUpdateRate, float jitterEps) {
    /** A dense model. */
    public static final MoeConfig NONE = new MoeConfig(0, 0, 0, false, true, 1f, 1, List.of(), 0, 0, 0, false, 0, 0, false, 0f, 0f);

    public MoeConfig {
        layerPattern = List.copyOf(layerPattern);
        if (experts != 0) {
            check(experts > 0, "num_local_experts must be positive, got " + experts);
            check(topK >= 1 && topK <= experts, "num_experts_per_tok " + topK + " must be in [1, num_local_experts = " + experts + "]");
            check(expertFfn > 0, "the experts' intermediate_size must be positive, got " + expertFfn);
            check(layerFreq >= 1, "moe_layer_freq must be >= 1, got " + layerFreq);
            boolean allMoe = layerPattern.isEmpty() ? layerFreq == 1 : !layerPattern.contains(false);
            check(denseFfn > 0 || allMoe, "dense layers between MoE layers need a positive dense_intermediate_size");
            check(sharedFfn >= 0, "shared_expert_intermediate_size must be >= 0, got " + sharedFfn);
            check(topKScale > 0, "routed_scaling_factor (moe_router_topk_scaling_factor) must be > 0, got " + topKScale);
            check(auxLossCoeff >= 0 && zLossCoeff >= 0, "load-balancing coefficients must be >= 0");
            check(!padToCapacity || capacityFactor > 0, "moe_pad_expert_input_to_capacity needs moe_expert_capacity_factor > 0");
            check(!expertBias || sigmoid, "moe_router_enable_expert_bias needs the sigmoid score function "
                    + "(moe_router_score_function sigmoid), as Megatron's router applies the bias only there");
            check(!expertBias || biasUpdateRate >= 0, "moe_router_bias_update_rate must be >= 0, got " + biasUpdateRate);
            check(jitterEps == 0, "moe_input_jitter_eps " + jitterEps + " is not supported yet (router input jitter is not implemented)");
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
        if (!enabled()) {
            return false;
        }
        return layerPattern.isEmpty() ? i % layerFreq == 0 : layerPattern.get(i);
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
     * {@code routed_scaling_factor}, {@code shared_expert_intermediate_size}; and Megatron's names
     * ({@link MoeConfigJson}).
     */
    static MoeConfig fromJson(JsonNode root, int expertFfn) {
        return MoeConfigJson.read(root, expertFfn);
    }

    /** Writes the keys {@link #fromJson} reads (HF's Mixtral keys plus ours where they differ from the defaults). */
    void toJson(ObjectNode o) {
        MoeConfigJson.write(this, o);
    }
}
