package org.sparkatron.model;

import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.List;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.parallel.GradBuffer;
import org.sparkatron.parallel.PipelineLayout;
import org.sparkatron.parallel.PipelineParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.precision.Fp8Recipe;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;


/**
 * What a model's configuration and parallel layout imply before any memory exists: the checks drivers run
 * before launching (tensor, expert and FP8 layouts that do not split evenly are refused, naming the numbers),
 * the parameters each pipeline stage holds on one rank of its tensor and expert groups and in which order (the
 * layout checkpoints describe), Megatron's gradient-buffer plan for them, and RoPE's tables. Static and
 * stateless; {@link Transformer} builds on it.
 */
public final class ModelLayout {
    private ModelLayout() {
    }

    /**
     * Megatron's gradient buffer layout for the parameters {@code params} of stage {@code stage} of {@code pl}:
     * one buffer per model chunk (its parameters in reverse order), buckets of the configured size on the
     * first stage's first chunk only (Megatron disables bucketing elsewhere), a tied embedding split over
     * stages in a bucket of its own.
     */
    static GradBuffer gradBuffer(ModelConfig cfg, List<ParameterSet.Param> params, PipelineLayout pl, int stage,
                                 DataParallel.Config config, int dpSize) {
        List<GradBuffer.ParamInfo> info = new ArrayList<>();
        int last = pl.virtualStages() - 1;
        for (ParameterSet.Param p : params) {
            int chunk;
            String n = p.name();
            if (n.startsWith("layers.")) {
                int layer = Integer.parseInt(n.substring(7, n.indexOf('.', 7)));
                chunk = -1;
                for (int c = 0; c <= last; c++) {
                    if (layer >= pl.firstLayer(stage, c) && layer < pl.endLayer(stage, c)) {
                        chunk = c;
                    }
                }
            } else if ((n.equals("embed") || n.equals("pos")) && pl.isFirst(stage, 0)) {
                chunk = 0;
            } else {
                chunk = last; // final norm, output layer, a tied embedding's copy on the last stage
            }
            boolean shared = cfg.tiedEmbeddings() && pl.stages() > 1 && n.equals("embed");
            info.add(new GradBuffer.ParamInfo(chunk, 0, shared));
        }
        return GradBuffer.plan(params, info, new int[] {dpSize}, config, stage == 0);
    }

    /** RoPE's cos and sin tables [maxPos, hd/2] on the host (Hugging Face's rotate-half convention). */
    static Tensor[] ropeTables(ModelConfig cfg) {
        int half = cfg.headDim() / 2;
        Tensor cs = Tensor.allocateHost(DType.F32, cfg.maxPositions(), half);
        Tensor sn = Tensor.allocateHost(DType.F32, cfg.maxPositions(), half);
        FloatBuffer c = cs.floats();
        FloatBuffer s = sn.floats();
        for (int pos = 0; pos < cfg.maxPositions(); pos++) {
            for (int j = 0; j < half; j++) {
                double angle = pos * Math.pow(cfg.ropeTheta(), -2.0 * j / cfg.headDim());
                c.put(pos * half + j, (float) Math.cos(angle));
                s.put(pos * half + j, (float) Math.sin(angle));
            }
        }
        return new Tensor[] {cs, sn};
    }

    /**
     * Refuses tensor-parallel sizes the model does not split into evenly (attention heads, key/value
     * heads, MLP width), naming the numbers. Key/value heads are never replicated, so fewer key/value
     * heads than TP ranks is refused. Drivers call it before launching anything.
     */
    public static void validate(ModelConfig cfg, int tpSize) {
        if (tpSize < 1) {
            throw new IllegalArgumentException("tensor parallel size must be >= 1, got " + tpSize);
        }
        if (cfg.heads() % tpSize != 0) {
            throw new IllegalArgumentException("attention heads " + cfg.heads() + " not divisible by tensor parallel size " + tpSize);
        }
        if (cfg.kvHeads() < tpSize) {
            throw new IllegalArgumentException("key/value heads " + cfg.kvHeads() + " fewer than tensor parallel size " + tpSize
                    + ": replicating key/value heads is not supported; use a tensor parallel size that divides " + cfg.kvHeads());
        }
        if (cfg.kvHeads() % tpSize != 0) {
            throw new IllegalArgumentException("key/value heads " + cfg.kvHeads() + " not divisible by tensor parallel size " + tpSize);
        }
        if (cfg.ffnHidden() % tpSize != 0) {
            throw new IllegalArgumentException("MLP hidden size " + cfg.ffnHidden() + " not divisible by tensor parallel size " + tpSize);
        }
    }

    /**
     * Refuses, before anything is allocated, a model this rank cannot hold in its context: shapes that do not
     * split over its TP and EP groups ({@link #validate}, {@link #validateExperts}), experts on kernels without
     * MoE kernels, experts with context parallelism or with data parallelism inside the model (neither built
     * yet), a pipeline layout for another number of layers.
     */
    static void validateRank(ModelConfig cfg, RankContext ctx) {
        validate(cfg, ctx.tp().size());
        validateExperts(cfg, ctx.expertParallel().size(), ctx.tp().size());
        if (cfg.isMoe() && !ctx.kernels().hasMoeKernels()) {
            throw new IllegalArgumentException("a mixture-of-experts model (num_local_experts " + cfg.moe().experts() + ") on "
                    + ctx.device().name() + ": this device has no MoE kernels (docs/moe.md)");
        }
        if (ctx.contextParallel().size() > 1 && cfg.isMoe()) {
            // Megatron reduces the routers' token counts over TP x CP for the load-balancing loss: not built yet
            throw new IllegalArgumentException("context parallelism (cp " + ctx.contextParallel().size() + ") with a "
                    + "mixture-of-experts model is not supported yet");
        }
        PipelineParallel pp = ctx.pipeline(); // null: one stage, which holds every layer
        if (pp != null && pp.layout().layers() != cfg.layers()) {
            throw new IllegalArgumentException("the pipeline layout is for " + pp.layout().layers() + " layers, the model has "
                    + cfg.layers());
        }
        if (ctx.dataParallel() != null && cfg.isMoe()) {
            // the expert region must stay one block at the end (ExpertGradientSync); Megatron's buffer order would split it
            throw new IllegalArgumentException("a mixture-of-experts model with data parallelism inside the model (DataParallel) "
                    + "is not supported yet: reduce its gradients with ExpertGradientSync (no DataParallel in the RankContext)");
        }
    }

    /**
     * {@link #validateFp8(ModelConfig, int, Fp8Recipe)} on this rank's device and kernels: a device that cannot run
     * FP8 GEMMs says why, and kernels without the FP8 kernels are refused, before anything is allocated.
     */
    static void validateFp8(ModelConfig cfg, RankContext ctx) {
        String why = ctx.device().fp8Unsupported();
        if (why != null) {
            throw new IllegalArgumentException(why);
        }
        if (!ctx.kernels().supportsFp8()) {
            throw new IllegalArgumentException("precision fp8: the kernels of " + ctx.device().name() + " do not implement FP8 yet;"
                    + " use precision bf16");
        }
        validateFp8(cfg, ctx.tp().size(), ctx.fp8Recipe());
    }

    /**
     * Refuses an FP8 run of this model that cannot work, before anything is allocated: a first/last-layers
     * split that leaves no FP8 layer, a mixture-of-experts model, or GEMM feature counts (per rank of a TP group
     * of {@code tpSize}) that are not multiples of 16. Drivers call it before launching anything.
     */
    public static void validateFp8(ModelConfig cfg, int tpSize, Fp8Recipe recipe) {
        validate(cfg, tpSize);
        recipe.validateFor(cfg.layers());
        if (cfg.moe().enabled()) {
            throw new IllegalArgumentException("precision fp8 with mixture-of-experts layers is not supported yet (the experts'"
                    + " GEMMs have no FP8 path); use precision bf16");
        }
        TransformerBlock.validateFp8(cfg, tpSize);
    }

    /**
     * Refuses expert layouts that do not split evenly: experts not divisible by the EP size, expert and
     * shared-expert widths not divisible by TP, EP without experts. Drivers call it before launching.
     */
    public static void validateExperts(ModelConfig cfg, int epSize, int tpSize) {
        MoeConfig m = cfg.moe();
        if (epSize < 1) {
            throw new IllegalArgumentException("expert parallel size must be >= 1, got " + epSize);
        }
        if (!m.enabled()) {
            if (epSize > 1) {
                throw new IllegalArgumentException("expert parallel size " + epSize + " needs a model with experts (num_local_experts)");
            }
            return;
        }
        if (m.experts() % epSize != 0) {
            throw new IllegalArgumentException("experts " + m.experts() + " not divisible by expert parallel size " + epSize);
        }
        if (m.expertFfn() % tpSize != 0) {
            throw new IllegalArgumentException("expert intermediate size " + m.expertFfn() + " not divisible by tensor parallel size "
                    + tpSize);
        }
        if (m.sharedFfn() % tpSize != 0) {
            throw new IllegalArgumentException("shared expert intermediate size " + m.sharedFfn()
                    + " not divisible by tensor parallel size " + tpSize);
        }
    }

    /** The number of MoE layers in the whole model. */
    static int moeLayers(ModelConfig cfg) {
        int n = 0;
        for (int i = 0; i < cfg.layers(); i++) {
            n += cfg.moe().isMoeLayer(i) ? 1 : 0;
        }
        return n;
    }

    /** The whole model's parameter layout on one rank of a TP group (no pipelining), as checkpoints store it. */
    static ParameterSet.Builder layout(ModelConfig cfg, int tpSize) {
        return layout(cfg, tpSize, 1, PipelineLayout.single(cfg.layers()), 0);
    }

    static ParameterSet.Builder layout(ModelConfig cfg, int tpSize, PipelineLayout pl, int stage) {
        return layout(cfg, tpSize, 1, pl, stage);
    }

    /**
     * The parameters pipeline stage {@code stage} holds, for one rank of a TP group of {@code tpSize}: the
     * embedding (and GPT-2's positions) on the first stage, its chunks' layers in order, the final norm and
     * the output layer on the last stage; with tied embeddings the last stage holds a copy of the embedding
     * as its output layer. For one stage these are the whole model's parameters in checkpoint order. The
     * MoE layers' experts ({@code epSize} splits them) come last, as the expert region of the block.
     */
    static ParameterSet.Builder layout(ModelConfig cfg, int tpSize, int epSize, PipelineLayout pl, int stage) {
        ParameterSet.Builder bld = ParameterSet.builder();
        int vocabRows = cfg.paddedVocab(tpSize) / tpSize;
        boolean first = pl.isFirst(stage, 0);
        boolean last = pl.isLast(stage, pl.virtualStages() - 1);
        if (first) {
            bld.add("embed", TpRole.SPLIT, vocabRows, cfg.hidden());
            if (cfg.family() == ModelConfig.Family.GPT2) {
                bld.add("pos", TpRole.SEQUENCE, cfg.maxPositions(), cfg.hidden());
            }
        }
        for (int c = 0; c < pl.virtualStages(); c++) {
            for (int i = pl.firstLayer(stage, c); i < pl.endLayer(stage, c); i++) {
                TransformerBlock.declare(bld, cfg, i, tpSize);
            }
        }
        if (last) {
            bld.add("norm_f.w", TpRole.SEQUENCE, cfg.hidden());
            if (cfg.family().hasBiases()) {
                bld.add("norm_f.b", TpRole.SEQUENCE, cfg.hidden());
            }
            if (!cfg.tiedEmbeddings()) {
                bld.add("head", TpRole.SPLIT, vocabRows, cfg.hidden());
            } else if (!first) {
                bld.add("embed", TpRole.SPLIT, vocabRows, cfg.hidden()); // the tied copy, kept equal through its gradients
            }
        }
        if (cfg.isMoe()) {
            bld.beginExperts();
            for (int c = 0; c < pl.virtualStages(); c++) {
                for (int i = pl.firstLayer(stage, c); i < pl.endLayer(stage, c); i++) {
                    if (cfg.moe().isMoeLayer(i)) {
                        MoeMlp.declareExperts(bld, cfg, "layers." + i + ".", tpSize, epSize);
                    }
                }
            }
        }
        return bld;
    }

    /**
     * The parameters pipeline stage {@code stage} of {@code pl} holds on one rank of a TP group of
     * {@code tpSize}, in layout order (for checkpoints, which describe every stage's shards).
     */
    public static List<ParameterSet.Param> stageParameters(ModelConfig cfg, int tpSize, PipelineLayout pl, int stage) {
        return layout(cfg, tpSize, pl, stage).params();
    }

    /** {@link #stageParameters(ModelConfig, int, PipelineLayout, int)} on one rank of an EP group of {@code epSize}. */
    public static List<ParameterSet.Param> stageParameters(ModelConfig cfg, int tpSize, int epSize, PipelineLayout pl, int stage) {
        return layout(cfg, tpSize, epSize, pl, stage).params();
    }
}
