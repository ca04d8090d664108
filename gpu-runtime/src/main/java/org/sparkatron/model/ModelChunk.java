package org.sparkatron.model;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.parallel.Mapping;
import org.sparkatron.parallel.Mappings;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.VocabParallelCrossEntropy;
import org.sparkatron.parallel.VocabParallelEmbedding;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.tensor.Tensor;

/**
 * A contiguous range of layers on one rank, with the embedding when it starts the model and the final norm,
 * output layer and loss when it ends it (Megatron's model chunk with {@code pre_process} /
 * {@code post_process}). {@link #forward} and {@link #backward} work on a {@link MicroBatch}: the chunk keeps
 * nothing of a micro-batch itself, so a pipeline schedule can have several in flight.
 *
 * <pre>
 *   forward:  [tokens -> embedding (+ positions)] -> layers -> [final norm -> output layer -> loss]
 *   backward: [loss gradient (computed in the forward, fused) -> final norm] -> layers -> [embedding, positions]
 * </pre>
 * The output layer runs in chunks of rows fused with the loss and its backward, so the {@code [N, V/tp]}
 * logits never exist at once; the gradient of its input is kept in the micro-batch for the backward.
 *
 * <p>Threading: one rank's thread. Every call only issues device work (kernels, copies, TP collectives).
 */
final class ModelChunk {
    private final ModelConfig cfg;
    private final Device device;
    private final Kernels k;
    private final TensorParallel tp;
    private final ParameterSet params;
    private final ParameterSet compute;
    private final WeightStaging staging; // mixed precision: widens each unit's 16-bit weights before it is read; else null
    private final boolean first;
    private final boolean last;
    private final int layerStart;
    private final List<TransformerBlock> blocks = new ArrayList<>();
    private final VocabParallelEmbedding embedding;     // first only
    private final VocabParallelCrossEntropy crossEntropy; // last only
    private final Mapping headInput;                      // last only
    private final String headName;
    private final int vocabLocal;
    private final RankBuffers buffers;
    private final ArrayDeque<MicroBatch> pool = new ArrayDeque<>();
    private final List<MicroBatch> all = new ArrayList<>();
    private MicroBatch lastForward;
    private final int[][] layerParams; // per block: its parameters' indices (for gradient-ready reports)
    private final int[] headParams;    // last chunk: the output layer's weight
    private final int[] normParams;    // last chunk: the final norm
    private final int[] embedParams;   // first chunk: embedding and positions
    private ForwardPreHook preHook = params -> { }; // told before the forward reads parameters

    ModelChunk(ModelConfig cfg, RankContext ctx, ParameterSet params, ParameterSet compute, WeightStaging staging,
               int layerStart, int layerEnd,
               boolean first, boolean last, Tensor ropeCos, Tensor ropeSin, Workspace ws, RankBuffers buffers, MoeStep moe,
               org.sparkatron.precision.Fp8State fp8, int[] fp8Index) {
        this.cfg = cfg;
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.tp = ctx.tp();
        this.params = params;
        this.compute = compute;
        this.staging = staging;
        this.first = first;
        this.last = last;
        this.layerStart = layerStart;
        this.buffers = buffers;
        for (int i = layerStart; i < layerEnd; i++) {
            blocks.add(new TransformerBlock(cfg, ctx, compute, i, ropeCos, ropeSin, ws, buffers.attention(), moe, fp8,
                    fp8 == null ? -1 : fp8Index[i]));
        }
        this.vocabLocal = cfg.paddedVocab(tp.size()) / tp.size();
        this.headName = cfg.tiedEmbeddings() ? "embed" : "head";
        embedding = first ? new VocabParallelEmbedding(ctx, vocabLocal, cfg.hidden(), compute.weight("embed"),
                params.grad("embed"), ws) : null;
        crossEntropy = last ? new VocabParallelCrossEntropy(ctx, vocabLocal, cfg.vocabSize()) : null;
        headInput = !last ? null : tp.sequenceParallel() ? new Mappings.GatherFromSequenceRegion(ctx)
                : new Mappings.CopyToTensorRegion(ctx);
        layerParams = new int[layerEnd - layerStart][];
        for (int i = layerStart; i < layerEnd; i++) {
            layerParams[i - layerStart] = indices(params, "layers." + i + ".", null);
        }
        headParams = last ? indices(params, null, headName) : new int[0];
        normParams = last ? indices(params, "norm_f.", null) : new int[0];
        embedParams = first ? concat(indices(params, null, "embed"), indices(params, null, "pos")) : new int[0];
    }

    /** Indices of the parameters named with {@code prefix} (or exactly {@code name}). */
    private static int[] indices(ParameterSet params, String prefix, String name) {
        List<Integer> out = new ArrayList<>();
        List<ParameterSet.Param> all = params.params();
        for (int i = 0; i < all.size(); i++) {
            String n = all.get(i).name();
            if (prefix != null ? n.startsWith(prefix) : n.equals(name)) {
                out.add(i);
            }
        }
        return out.stream().mapToInt(Integer::intValue).toArray();
    }

    private static int[] concat(int[] a, int[] b) {
        int[] out = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    /** Makes unit {@code unit}'s weights readable through {@code compute} (mixed precision: widens them; see WeightStaging). */
    private void stage(String unit) {
        if (staging != null) {
            staging.use(unit);
        }
    }

    /** Told, during every forward, which parameters are about to be read (overlap_param_gather waits there). */
    void setForwardPreHook(ForwardPreHook hook) {
        this.preHook = hook;
    }

    private static void report(GradReadyHook hook, int[] params) {
        if (hook != null) {
            for (int p : params) {
                hook.ready(p);
            }
        }
    }

    boolean isFirst() {
        return first;
    }

    boolean isLast() {
        return last;
    }

    int layers() {
        return blocks.size();
    }

    /** A micro-batch slot of this shape (from the pool; a new one only when more are in flight than ever before). */
    MicroBatch acquire(BlockActivations.Shape s, Recompute mode) {
        MicroBatch mb = pool.poll();
        if (mb == null || !mb.shape.equals(s) || mb.mode != mode) {
            if (mb != null) { // the shape or mode changed: the old slots are of no use any more
                releaseAll();
            }
            mb = new MicroBatch(device, s, blocks, first, last, mode);
            all.add(mb);
        }
        return mb;
    }

    /** Returns a slot to the pool once the sends from its buffers are done. */
    void release(MicroBatch mb) {
        mb.awaitSends();
        pool.push(mb);
    }

    /** Frees every slot (a new batch shape, or the model closing). */
    void releaseAll() {
        for (MicroBatch mb : all) {
            mb.release();
        }
        all.clear();
        pool.clear();
    }

    /** Slots allocated so far (the most micro-batches this chunk has held at once). */
    int slots() {
        return all.size();
    }

    /**
     * The forward of one micro-batch. The first chunk embeds {@code mb.tokens}; others read {@code mb.input}
     * (received). The last chunk adds the batch's mean loss times {@code lossWeight} to {@code lossAcc[slot]}
     * and, with {@code training}, computes the output layer's gradients (its weight gradient accumulated,
     * scaled by {@code gradScale / N}; its input's kept in the micro-batch).
     */
    void forward(MicroBatch mb, boolean training, float gradScale, Tensor lossAcc, int slot, double lossWeight) {
        BlockActivations.Shape s = mb.shape;
        int n = s.n();
        int c = s.c();
        if (first) {
            preHook.beforeUse(embedParams);
            stage("embed");
            embedding.forward(mb.inputs(), n, mb.input);
            if (cfg.family() == ModelConfig.Family.GPT2) {
                stage("pos");
                k.addPositions(mb.input, compute.weight("pos"), buffers.positions(), tp.firstLocalRow(n), s.nl(), s.t(), c); // rounded
            }
        }
        lastForward = mb;
        TransformerBlock.DropKey drop = training ? mb.drop : TransformerBlock.DropKey.NONE;
        for (int i = 0; i < blocks.size(); i++) {
            preHook.beforeUse(layerParams[i]);
            stage("layers." + (layerStart + i));
            blocks.get(i).forward(mb.blocks[i], mb.layerInput(i), s, buffers.scratch(), drop);
        }
        if (!last) {
            return;
        }
        preHook.beforeUse(normParams);
        preHook.beforeUse(headParams);
        stage("norm_f");
        norm(mb);
        headInput.forward(mb.normF, mb.headX);
        stage(headName);
        Tensor head = compute.weight(headName);
        Tensor dhead = params.grad(headName);
        Tensor logits = buffers.logits();
        int chunk = buffers.logitsRows();
        for (int r0 = 0; r0 < n; r0 += chunk) {
            int rows = Math.min(chunk, n - r0);
            Tensor x = mb.headX.narrowRows(r0, rows);
            k.linearForward(logits, x, head, null, rows, c, vocabLocal);
            crossEntropy.forward(logits, mb.losses.slice(r0, rows), mb.targets().slice(r0, rows), rows, training, gradScale / n);
            if (training) {
                k.linearBackward(mb.dheadX.narrowRows(r0, rows), false, dhead, null, logits, x, head, rows, c, vocabLocal);
            }
        }
        k.sum(mb.losses, n, lossAcc, slot, lossWeight / n);
    }

    private void norm(MicroBatch mb) {
        Tensor x = mb.output();
        int nl = mb.shape.nl();
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormForward(mb.normF, mb.rstdF, x, compute.weight("norm_f.w"), nl, cfg.hidden(), cfg.normEps());
        } else {
            k.layerNormForward(mb.normF, mb.meanF, mb.rstdF, x, compute.weight("norm_f.w"), compute.weight("norm_f.b"), nl,
                    cfg.hidden(), cfg.normEps());
        }
    }

    /**
     * The backward of one micro-batch, after its forward. The last chunk starts from the output layer's input
     * gradient kept by the forward; others from {@code mb.grad} (received). Afterwards {@code mb.grad} holds
     * dLoss/d(this chunk's input), to send to the previous stage; parameter gradients are accumulated.
     * {@code hook} (null: none) is told each parameter whose gradient is final: give it only for the chunk's
     * last backward of a training step.
     */
    void backward(MicroBatch mb, GradReadyHook hook) {
        BlockActivations.Shape s = mb.shape;
        int n = s.n();
        int nl = s.nl();
        int c = s.c();
        TransformerBlock.Scratch scratch = buffers.scratch();
        if (last) {
            report(hook, headParams); // its weight gradient was accumulated by the fused forward
            Tensor dnormF = tp.sequenceParallel() ? scratch.dnorm : mb.dheadX;
            headInput.backward(mb.dheadX, dnormF);
            k.zero(mb.grad);
            stage("norm_f");
            if (cfg.family() == ModelConfig.Family.LLAMA) {
                k.rmsNormBackward(mb.grad, params.grad("norm_f.w"), dnormF, mb.output(), compute.weight("norm_f.w"), mb.rstdF, nl, c);
            } else {
                k.layerNormBackward(mb.grad, params.grad("norm_f.w"), params.grad("norm_f.b"), dnormF, mb.output(),
                        compute.weight("norm_f.w"), mb.meanF, mb.rstdF, nl, c);
            }
            report(hook, normParams);
        }
        for (int i = blocks.size() - 1; i >= 0; i--) {
            stage("layers." + (layerStart + i)); // the backward reads the weights again (and a recomputation does)
            blocks.get(i).backward(mb.blocks[i], mb.layerInput(i), mb.grad, s, scratch, mb.drop);
            report(hook, layerParams[i]);
        }
        if (first) {
            if (cfg.family() == ModelConfig.Family.GPT2) {
                k.positionsBackward(params.grad("pos"), mb.grad, buffers.positions(), tp.firstLocalRow(n), nl, s.t(), c);
            }
            embedding.backward(mb.grad, mb.inputs(), n);
            report(hook, embedParams);
        }
    }

    /** The micro-batch of the latest forward (its buffers stay intact until its slot is taken again). */
    MicroBatch lastForward() {
        return lastForward;
    }

    /** The first layer's global index. */
    int layerStart() {
        return layerStart;
    }

    void close() {
        releaseAll();
        for (TransformerBlock b : blocks) {
            b.close();
        }
        if (crossEntropy != null) {
            crossEntropy.close();
        }
    }
}
