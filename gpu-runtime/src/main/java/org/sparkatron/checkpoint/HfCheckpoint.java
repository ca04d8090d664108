package org.sparkatron.checkpoint;

import java.io.IOException;
import java.nio.FloatBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.sparkatron.device.Device;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Moves weights between our parameter layout and Hugging Face's tensor names and layouts, so published
 * GPT-2 and Llama checkpoints load and our models save as files {@code transformers} reads.
 *
 * <p>GPT-2 stores {@code Conv1D} weights as {@code [in, out]} (we keep {@code [out, in]}: transposed on the
 * way), with or without a {@code transformer.} prefix; the attention-mask buffers old checkpoints carry are
 * ignored. Llama's separate q/k/v and gate/up projections become our fused {@code qkv} and {@code up} rows.
 * The padded vocabulary rows never appear in files. Any tensor that is missing, unexpected or of the wrong
 * shape is refused with its name.
 */
public final class HfCheckpoint {
    private HfCheckpoint() {
    }

    /**
     * One HF tensor = the elements from {@code offset} of an internal parameter (a block of its rows, or one
     * expert's matrix), or the whole parameter transposed for GPT-2's Conv1D.
     */
    private record Link(String hf, String internal, long offset, int[] hfShape, boolean transpose) {
        /** The tensor starting at row {@code row} of a parameter of {@code cols} columns. */
        static Link rows(String hf, String internal, int row, int cols, int[] hfShape) {
            return new Link(hf, internal, (long) row * cols, hfShape, false);
        }
    }

    private static List<Link> links(ModelConfig cfg) {
        List<Link> l = new ArrayList<>();
        int c = cfg.hidden();
        int v = cfg.vocabSize();
        int f = cfg.ffnHidden();
        if (cfg.family() == ModelConfig.Family.GPT2) {
            l.add(new Link("wte.weight", "embed", 0, new int[] {v, c}, false));
            l.add(new Link("wpe.weight", "pos", 0, new int[] {cfg.maxPositions(), c}, false));
            for (int i = 0; i < cfg.layers(); i++) {
                String h = "h." + i + ".";
                String p = "layers." + i + ".";
                l.add(new Link(h + "ln_1.weight", p + "norm1.w", 0, new int[] {c}, false));
                l.add(new Link(h + "ln_1.bias", p + "norm1.b", 0, new int[] {c}, false));
                l.add(new Link(h + "attn.c_attn.weight", p + "attn.qkv.w", 0, new int[] {c, 3 * c}, true));
                l.add(new Link(h + "attn.c_attn.bias", p + "attn.qkv.b", 0, new int[] {3 * c}, false));
                l.add(new Link(h + "attn.c_proj.weight", p + "attn.out.w", 0, new int[] {c, c}, true));
                l.add(new Link(h + "attn.c_proj.bias", p + "attn.out.b", 0, new int[] {c}, false));
                l.add(new Link(h + "ln_2.weight", p + "norm2.w", 0, new int[] {c}, false));
                l.add(new Link(h + "ln_2.bias", p + "norm2.b", 0, new int[] {c}, false));
                l.add(new Link(h + "mlp.c_fc.weight", p + "mlp.up.w", 0, new int[] {c, f}, true));
                l.add(new Link(h + "mlp.c_fc.bias", p + "mlp.up.b", 0, new int[] {f}, false));
                l.add(new Link(h + "mlp.c_proj.weight", p + "mlp.down.w", 0, new int[] {f, c}, true));
                l.add(new Link(h + "mlp.c_proj.bias", p + "mlp.down.b", 0, new int[] {c}, false));
            }
            l.add(new Link("ln_f.weight", "norm_f.w", 0, new int[] {c}, false));
            l.add(new Link("ln_f.bias", "norm_f.b", 0, new int[] {c}, false));
        } else {
            int hd = cfg.headDim();
            int q = cfg.heads() * hd;
            int kv = cfg.kvHeads() * hd;
            l.add(new Link("model.embed_tokens.weight", "embed", 0, new int[] {v, c}, false));
            for (int i = 0; i < cfg.layers(); i++) {
                String h = "model.layers." + i + ".";
                String p = "layers." + i + ".";
                l.add(new Link(h + "input_layernorm.weight", p + "norm1.w", 0, new int[] {c}, false));
                l.add(new Link(h + "self_attn.q_proj.weight", p + "attn.qkv.w", 0, new int[] {q, c}, false));
                l.add(Link.rows(h + "self_attn.k_proj.weight", p + "attn.qkv.w", q, c, new int[] {kv, c}));
                l.add(Link.rows(h + "self_attn.v_proj.weight", p + "attn.qkv.w", q + kv, c, new int[] {kv, c}));
                l.add(new Link(h + "self_attn.o_proj.weight", p + "attn.out.w", 0, new int[] {c, q}, false));
                l.add(new Link(h + "post_attention_layernorm.weight", p + "norm2.w", 0, new int[] {c}, false));
                if (cfg.moe().isMoeLayer(i)) {
                    moeLinks(l, cfg, h + "block_sparse_moe.", p + "moe.");
                } else {
                    l.add(new Link(h + "mlp.gate_proj.weight", p + "mlp.up.w", 0, new int[] {f, c}, false));
                    l.add(Link.rows(h + "mlp.up_proj.weight", p + "mlp.up.w", f, c, new int[] {f, c}));
                    l.add(new Link(h + "mlp.down_proj.weight", p + "mlp.down.w", 0, new int[] {c, f}, false));
                }
            }
            l.add(new Link("model.norm.weight", "norm_f.w", 0, new int[] {c}, false));
            if (!cfg.tiedEmbeddings()) {
                l.add(new Link("lm_head.weight", "head", 0, new int[] {v, c}, false));
            }
        }
        return l;
    }

    /**
     * Mixtral's sparse MoE block: {@code gate} (the router, [E, C]), and per expert e {@code experts.e.w1}
     * (gate [F, C]), {@code w3} (up [F, C]) and {@code w2} (down [C, F]), which are expert e's slices of our
     * {@code experts.up.w} [E, 2F, C] (gate rows, then up rows) and {@code experts.down.w} [E, C, F]. A shared
     * expert (not part of Mixtral) is stored as {@code shared_expert.{gate,up,down}_proj.weight}, Qwen2-MoE's names, and
     * an aux-loss-free expert bias as {@code gate.e_score_correction_bias}, DeepSeek-V3's.
     */
    private static void moeLinks(List<Link> l, ModelConfig cfg, String h, String p) {
        int c = cfg.hidden();
        int f = cfg.moe().expertFfn();
        l.add(new Link(h + "gate.weight", p + "router.w", 0, new int[] {cfg.moe().experts(), c}, false));
        if (cfg.moe().expertBias()) { // DeepSeek-V3's name for the aux-loss-free bias
            l.add(new Link(h + "gate.e_score_correction_bias", p + "router.b", 0, new int[] {cfg.moe().experts()}, false));
        }
        for (int e = 0; e < cfg.moe().experts(); e++) {
            String x = h + "experts." + e + ".";
            l.add(new Link(x + "w1.weight", p + "experts.up.w", (long) e * 2 * f * c, new int[] {f, c}, false));
            l.add(new Link(x + "w3.weight", p + "experts.up.w", ((long) e * 2 * f + f) * c, new int[] {f, c}, false));
            l.add(new Link(x + "w2.weight", p + "experts.down.w", (long) e * c * f, new int[] {c, f}, false));
        }
        int fs = cfg.moe().sharedFfn();
        if (fs > 0) {
            l.add(new Link(h + "shared_expert.gate_proj.weight", p + "shared.up.w", 0, new int[] {fs, c}, false));
            l.add(Link.rows(h + "shared_expert.up_proj.weight", p + "shared.up.w", fs, c, new int[] {fs, c}));
            l.add(new Link(h + "shared_expert.down_proj.weight", p + "shared.down.w", 0, new int[] {c, fs}, false));
        }
    }

    /** Names in a file we knowingly skip: buffers, not parameters, and the tied output copy. */
    private static boolean ignorable(ModelConfig cfg, String name) {
        if (cfg.family() == ModelConfig.Family.GPT2) {
            return name.endsWith(".attn.bias") || name.endsWith(".attn.masked_bias") || name.equals("lm_head.weight");
        }
        return name.endsWith("rotary_emb.inv_freq") || (cfg.tiedEmbeddings() && name.equals("lm_head.weight"));
    }

    /** Every tensor name of the Hugging Face layout of {@code cfg}, in file order. */
    public static List<String> names(ModelConfig cfg) {
        List<String> out = new ArrayList<>();
        for (Link link : links(cfg)) {
            out.add(link.hf());
        }
        return out;
    }

    /**
     * Loads every parameter from a Hugging Face-layout safetensors file (F32, BF16 or F16) into {@code ps}.
     *
     * @throws IllegalArgumentException naming the file and tensor when one is missing, unexpected, misshapen or
     *     holds a NaN or an infinity (a damaged or diverged model: nothing can be trained or scored from it)
     */
    public static void load(Path file, ModelConfig cfg, ParameterSet ps) throws IOException {
        Device device = ps.device();
        Tensor host = device.toHost(ps.weights()); // the block itself on the CPU device
        try (SafeTensorsFile st = SafeTensorsFile.open(file)) {
            String prefix = "";
            if (cfg.family() == ModelConfig.Family.GPT2 && !st.contains("wte.weight") && st.contains("transformer.wte.weight")) {
                prefix = "transformer.";
            }
            Set<String> unused = new TreeSet<>(st.names());
            for (Link link : links(cfg)) {
                String name = prefix + link.hf();
                if (!st.contains(name)) {
                    throw new IllegalArgumentException(file + ": missing tensor '" + name + "' for a " + cfg.family()
                            + " model of " + cfg.layers() + " layers");
                }
                int[] shape = st.shape(name);
                if (!Arrays.equals(shape, link.hfShape())) {
                    throw new IllegalArgumentException(file + ": tensor '" + name + "' has shape " + Arrays.toString(shape)
                            + ", expected " + Arrays.toString(link.hfShape()) + " from the model config");
                }
                float[] values = st.readF32(name);
                refuseNonFinite(file, name, values);
                copyIn(values, link, ParameterSet.view(host, ps.param(link.internal())));
                unused.remove(name);
            }
            final String pre = prefix;
            unused.removeIf(n -> ignorable(cfg, n.startsWith(pre) ? n.substring(pre.length()) : n));
            if (!unused.isEmpty()) {
                throw new IllegalArgumentException(file + ": unexpected tensors " + unused + " for a " + cfg.family()
                        + " model of " + cfg.layers() + " layers (is the config right?)");
            }
        }
        device.fromHost(ps.weights(), host);
    }

    /**
     * Writes all parameters as F32 in Hugging Face layout (GPT-2 with the {@code transformer.} prefix, as
     * {@code GPT2LMHeadModel} saves), atomically.
     */
    public static void save(Path file, ModelConfig cfg, ParameterSet ps) throws IOException {
        String prefix = cfg.family() == ModelConfig.Family.GPT2 ? "transformer." : "";
        LinkedHashMap<String, Tensor> out = new LinkedHashMap<>();
        toHf(cfg, ps, false).forEach((name, t) -> out.put(prefix + name, t));
        Files.createDirectories(file.toAbsolutePath().getParent());
        SafeTensors.write(file, out, Map.of("format", "pt"));
    }

    /**
     * The weights (or, with {@code grads}, the gradients) as Hugging Face tensors by name (no
     * {@code transformer.} prefix), in file order.
     */
    public static LinkedHashMap<String, Tensor> toHf(ModelConfig cfg, ParameterSet ps, boolean grads) {
        LinkedHashMap<String, Tensor> out = new LinkedHashMap<>();
        Tensor host = ps.device().toHost(grads ? ps.grads() : ps.weights());
        for (Link link : links(cfg)) {
            Tensor t = Tensor.allocateHost(DType.F32, link.hfShape());
            copyOut(link, ParameterSet.view(host, ps.param(link.internal())), t);
            out.put(link.hf(), t);
        }
        return out;
    }

    private static void refuseNonFinite(Path file, String name, float[] values) {
        int bad = 0;
        int first = -1;
        for (int i = 0; i < values.length; i++) {
            if (!Float.isFinite(values[i])) {
                bad++;
                first = first < 0 ? i : first;
            }
        }
        if (bad > 0) {
            throw new IllegalArgumentException(file + ": tensor '" + name + "' holds " + bad + " non-finite value(s) of "
                    + values.length + " (first: " + values[first] + " at index " + first + "); the model is damaged or diverged");
        }
    }

    private static void copyIn(float[] src, Link link, Tensor param) {
        FloatBuffer dst = param.floats();
        int cols = param.rank() == 1 ? 1 : param.dim(1);
        int[] s = link.hfShape();
        if (link.transpose()) { // HF [in, out] -> ours [out, in]
            int in = s[0];
            int out = s[1];
            for (int i = 0; i < in; i++) {
                for (int o = 0; o < out; o++) {
                    dst.put(o * cols + i, src[i * out + o]);
                }
            }
        } else {
            dst.put(Math.toIntExact(link.offset()), src, 0, src.length);
        }
    }

    private static void copyOut(Link link, Tensor param, Tensor hf) {
        FloatBuffer src = param.floats();
        FloatBuffer dst = hf.floats();
        int cols = param.rank() == 1 ? 1 : param.dim(1);
        int[] s = link.hfShape();
        if (link.transpose()) {
            int in = s[0];
            int out = s[1];
            for (int i = 0; i < in; i++) {
                for (int o = 0; o < out; o++) {
                    dst.put(i * out + o, src.get(o * cols + i));
                }
            }
        } else {
            int n = (int) hf.numel();
            int at = Math.toIntExact(link.offset());
            for (int i = 0; i < n; i++) {
                dst.put(i, src.get(at + i));
            }
        }
    }
}
