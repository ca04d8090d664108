package org.sparkatron.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayList;
import java.util.List;

/**
 * A {@link MoeConfig} in a Hugging Face Mixtral-style config.json: HF's and DeepSeek/Qwen's keys, and Megatron
 * Core's names for the same settings (either spelling is read; both with different values are refused, naming
 * them). Stateless.
 *
 * <p>Keys: {@code num_local_experts}, {@code num_experts_per_tok}; the score function {@code scoring_func} or
 * {@code moe_router_score_function} ({@code softmax}, {@code sigmoid}); {@code norm_topk_prob} or, for softmax,
 * Megatron's {@code moe_router_pre_softmax} (true: softmax over all experts, no renormalisation);
 * {@code routed_scaling_factor} or {@code moe_router_topk_scaling_factor}; {@code shared_expert_intermediate_size}
 * or {@code moe_shared_expert_intermediate_size}; {@code moe_layer_freq} (an integer n: every n-th layer from
 * layer 0; a list of 0/1, one per layer; or Megatron's string form such as {@code "([0]*1+[1]*3)"}) with
 * {@code dense_intermediate_size} for the dense layers; {@code moe_expert_capacity_factor},
 * {@code moe_pad_expert_input_to_capacity}; {@code moe_aux_loss_coeff} (else HF's {@code router_aux_loss_coef},
 * else 0.001), {@code moe_z_loss_coeff} (else {@code router_z_loss_coef}, else 0);
 * {@code moe_router_enable_expert_bias}, {@code moe_router_bias_update_rate} (Megatron's default 1e-3).
 * {@code moe_input_jitter_eps} other than 0 and {@code moe_shared_expert_gate} true are refused (not implemented).
 */
final class MoeConfigJson {
    private MoeConfigJson() {
    }

    /** The keys read here, beside Llama's (what a mixtral config may hold). */
    static final List<String> KEYS = List.of("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef",
            "output_router_logits", "router_jitter_noise", "sliding_window", "router_z_loss_coef", "moe_aux_loss_coeff",
            "moe_z_loss_coeff", "moe_expert_capacity_factor", "moe_pad_expert_input_to_capacity", "moe_layer_freq",
            "dense_intermediate_size", "shared_expert_intermediate_size", "scoring_func", "norm_topk_prob",
            "routed_scaling_factor", "moe_router_score_function", "moe_router_topk_scaling_factor", "moe_router_pre_softmax",
            "moe_shared_expert_intermediate_size", "moe_shared_expert_gate", "moe_router_enable_expert_bias",
            "moe_router_bias_update_rate", "moe_input_jitter_eps");

    static MoeConfig read(JsonNode root, int expertFfn) {
        String score = eitherText(root, "scoring_func", "moe_router_score_function", "softmax");
        if (!score.equals("softmax") && !score.equals("sigmoid")) {
            throw new IllegalArgumentException((root.hasNonNull("scoring_func") ? "scoring_func" : "moe_router_score_function") + " '"
                    + score + "' is not supported (softmax or sigmoid)");
        }
        boolean sigmoid = score.equals("sigmoid");
        if (root.path("router_jitter_noise").asDouble(0) != 0) {
            throw new IllegalArgumentException("router_jitter_noise " + root.get("router_jitter_noise") + " is not supported (only 0; "
                    + "moe_input_jitter_eps is Megatron's router input jitter)");
        }
        if (root.path("moe_input_jitter_eps").asDouble(0) != 0) {
            throw new IllegalArgumentException("moe_input_jitter_eps " + root.get("moe_input_jitter_eps") + " is not supported yet (only 0 "
                    + "or null: no router input jitter)");
        }
        if (root.path("moe_shared_expert_gate").asBoolean(false)) {
            throw new IllegalArgumentException("moe_shared_expert_gate true is not supported yet (a shared expert without a gate only)");
        }
        boolean norm = root.path("norm_topk_prob").asBoolean(true);
        if (root.has("moe_router_pre_softmax")) {
            boolean pre = root.get("moe_router_pre_softmax").asBoolean();
            if (sigmoid && pre) {
                throw new IllegalArgumentException("moe_router_pre_softmax applies to the softmax router only, not to sigmoid");
            }
            if (root.has("norm_topk_prob") && norm == pre && !sigmoid) {
                throw new IllegalArgumentException("moe_router_pre_softmax " + pre + " contradicts norm_topk_prob " + norm
                        + " (pre-softmax means no renormalisation over the top k)");
            }
            norm = sigmoid || !pre;
        }
        int layers = root.path("num_hidden_layers").asInt(0);
        int freq = 1;
        List<Boolean> pattern = List.of();
        JsonNode f = root.get("moe_layer_freq");
        if (f != null && !f.isNull()) {
            if (f.isIntegralNumber()) {
                freq = intKey(root, "moe_layer_freq");
            } else {
                pattern = f.isArray() ? listPattern(f) : parsePattern(f.asText());
                if (pattern.size() != layers) {
                    throw new IllegalArgumentException("moe_layer_freq " + f + " gives " + pattern.size() + " layers, but num_hidden_layers is "
                            + layers);
                }
            }
        }
        double aux = root.hasNonNull("moe_aux_loss_coeff") ? root.get("moe_aux_loss_coeff").asDouble()
                : root.path("router_aux_loss_coef").asDouble(0.001);
        double z = root.hasNonNull("moe_z_loss_coeff") ? root.get("moe_z_loss_coeff").asDouble()
                : root.path("router_z_loss_coef").asDouble(0);
        double scale = eitherNumber(root, "routed_scaling_factor", "moe_router_topk_scaling_factor", 1.0);
        int shared = eitherInt(root, "shared_expert_intermediate_size", "moe_shared_expert_intermediate_size", 0);
        return new MoeConfig(intKey(root, "num_local_experts"), intKey(root, "num_experts_per_tok"), expertFfn, sigmoid, norm,
                (float) scale, freq, pattern,
                root.hasNonNull("dense_intermediate_size") ? intKey(root, "dense_intermediate_size") : expertFfn, shared,
                root.path("moe_expert_capacity_factor").asDouble(0), root.path("moe_pad_expert_input_to_capacity").asBoolean(false),
                aux, z, root.path("moe_router_enable_expert_bias").asBoolean(false),
                (float) root.path("moe_router_bias_update_rate").asDouble(1e-3), (float) root.path("moe_input_jitter_eps").asDouble(0));
    }

    /** The value of key a or key b, refusing both with different values; null when neither. */
    private static JsonNode either(JsonNode root, String a, String b) {
        JsonNode x = root.hasNonNull(a) ? root.get(a) : null;
        JsonNode y = root.hasNonNull(b) ? root.get(b) : null;
        if (x != null && y != null && !(x.isNumber() && y.isNumber() ? x.asDouble() == y.asDouble() : x.equals(y))) {
            throw new IllegalArgumentException(a + " " + x + " and " + b + " " + y + " disagree (they are the same setting)");
        }
        return x != null ? x : y;
    }

    private static String eitherText(JsonNode root, String a, String b, String dflt) {
        JsonNode v = either(root, a, b);
        if (v != null && !v.isTextual()) {
            throw new IllegalArgumentException((root.hasNonNull(a) ? a : b) + " must be a string, got " + v);
        }
        return v == null ? dflt : v.asText();
    }

    private static double eitherNumber(JsonNode root, String a, String b, double dflt) {
        JsonNode v = either(root, a, b);
        if (v != null && !v.isNumber()) {
            throw new IllegalArgumentException((root.hasNonNull(a) ? a : b) + " must be a number, got " + v);
        }
        return v == null ? dflt : v.asDouble();
    }

    private static int eitherInt(JsonNode root, String a, String b, int dflt) {
        JsonNode v = either(root, a, b);
        if (v != null && (!v.isIntegralNumber() || !v.canConvertToInt())) {
            throw new IllegalArgumentException((root.hasNonNull(a) ? a : b) + " must be an integer, got " + v);
        }
        return v == null ? dflt : v.asInt();
    }

    private static List<Boolean> listPattern(JsonNode a) {
        List<Boolean> out = new ArrayList<>();
        for (JsonNode x : a) {
            if (!x.isIntegralNumber() || (x.asInt() != 0 && x.asInt() != 1)) {
                throw new IllegalArgumentException("moe_layer_freq list entries must be 0 or 1, got " + x + " in " + a);
            }
            out.add(x.asInt() == 1);
        }
        return out;
    }

    /** Megatron's string form: terms {@code [a,b,...]} or {@code [a,...]*n} joined by {@code +}, optionally in parentheses. */
    static List<Boolean> parsePattern(String text) {
        String s = text.replace(" ", "");
        if (s.startsWith("(") && s.endsWith(")")) {
            s = s.substring(1, s.length() - 1);
        }
        List<Boolean> out = new ArrayList<>();
        for (String term : s.split("\\+")) {
            int close = term.indexOf(']');
            if (!term.startsWith("[") || close < 0) {
                throw new IllegalArgumentException("moe_layer_freq '" + text + "': expected terms like [1,0]*3 joined by +, got '" + term + "'");
            }
            int times = 1;
            String rest = term.substring(close + 1);
            try {
                if (!rest.isEmpty()) {
                    if (!rest.startsWith("*")) {
                        throw new NumberFormatException(rest);
                    }
                    times = Integer.parseInt(rest.substring(1));
                }
                List<Boolean> unit = new ArrayList<>();
                for (String v : term.substring(1, close).split(",")) {
                    int x = Integer.parseInt(v);
                    if (x != 0 && x != 1) {
                        throw new NumberFormatException(v);
                    }
                    unit.add(x == 1);
                }
                for (int i = 0; i < times; i++) {
                    out.addAll(unit);
                }
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("moe_layer_freq '" + text + "': '" + term + "' is not a list of 0/1 times a count");
            }
        }
        return out;
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

    static void write(MoeConfig m, ObjectNode o) {
        o.put("num_local_experts", m.experts()).put("num_experts_per_tok", m.topK()).put("router_aux_loss_coef", m.auxLossCoeff())
                .put("moe_aux_loss_coeff", m.auxLossCoeff()).put("output_router_logits", false).put("router_jitter_noise", 0.0);
        if (m.zLossCoeff() != 0) {
            o.put("moe_z_loss_coeff", m.zLossCoeff());
        }
        if (m.sigmoid()) {
            o.put("scoring_func", "sigmoid");
        }
        if (!m.normTopK()) {
            o.put("norm_topk_prob", false);
        }
        if (m.topKScale() != 1f) {
            o.put("routed_scaling_factor", m.topKScale());
        }
        if (!m.layerPattern().isEmpty()) {
            ArrayNode a = o.putArray("moe_layer_freq");
            m.layerPattern().forEach(b -> a.add(b ? 1 : 0));
            o.put("dense_intermediate_size", m.denseFfn());
        } else if (m.layerFreq() != 1) {
            o.put("moe_layer_freq", m.layerFreq()).put("dense_intermediate_size", m.denseFfn());
        }
        if (m.sharedFfn() > 0) {
            o.put("shared_expert_intermediate_size", m.sharedFfn());
        }
        if (m.capacityFactor() > 0) {
            o.put("moe_expert_capacity_factor", m.capacityFactor());
            if (m.padToCapacity()) {
                o.put("moe_pad_expert_input_to_capacity", true);
            }
        }
        if (m.expertBias()) {
            o.put("moe_router_enable_expert_bias", true).put("moe_router_bias_update_rate", m.biasUpdateRate());
        }
        if (m.jitterEps() > 0) {
            o.put("moe_input_jitter_eps", m.jitterEps());
        }
    }
}
