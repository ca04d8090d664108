package org.sparkatron.parallel;

import java.io.IOException;
import java.nio.file.Path;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.model.Transformer;
import org.sparkatron.model.TpShards;

/**
 * Model directories (Hugging Face {@code config.json} + {@code model.safetensors}, always the full
 * TP = 1 tensors) for tensor-parallel ranks: {@link #load} has each rank read the full tensors and keep
 * its shard, {@link #save} gathers the shards and has TP rank 0 write. So a TP run starts from any model
 * directory and writes one that any layout (or Hugging Face) reads.
 *
 * <p>Memory: each rank holds the full model transiently while loading or saving. Blocking; both calls
 * are TP collectives. Stateless.
 */
public final class TpCheckpoint {
    private TpCheckpoint() {
    }

    /** This rank's shard of the model in {@code dir}, for the rank {@code ctx} describes. Every rank of the group calls it. */
    public static Transformer load(Path dir, RankContext ctx) throws IOException {
        TensorParallel tp = ctx.tp();
        ExpertParallel ep = ctx.expertParallel();
        if (tp.size() == 1 && ep.size() == 1) {
            return ModelStore.load(dir, ctx);
        }
        Transformer full = ModelStore.load(dir, ctx.device()); // fp32, TP = 1: the weights as stored
        try {
            Transformer model = new Transformer(full.config(), ctx);
            TpShards.scatter(full.config(), full.params(), model.params(), tp.rank(), tp.size(), ep.rank(), ep.size(), false);
            return model;
        } finally {
            full.close();
        }
    }

    /**
     * The whole model as a TP = 1 {@link Transformer} on every rank, on the same device: weights, and with
     * {@code grads} the gradients too (call {@link Transformer#finishGradients()} first under sequence
     * parallelism). The caller closes it.
     */
    public static Transformer gatherFull(Transformer model, boolean grads) {
        model.finishParamGather(); // overlap_param_gather: the weights current in full (a DP collective then)
        Transformer full = new Transformer(model.config(), model.context().withTensorParallel(TensorParallel.none()));
        ExpertParallel ep = model.expertParallel();
        TpShards.gather(model.config(), model.params(), full.params(), model.tensorParallel(), ep, false);
        if (grads) {
            TpShards.gather(model.config(), model.params(), full.params(), model.tensorParallel(), ep, true);
        }
        return full;
    }

    /**
     * Gathers the full weights; TP rank 0 writes them to {@code dir}; all ranks return once the files are
     * complete. A write failure aborts the group, so the other ranks fail too instead of waiting.
     */
    public static void save(Transformer model, Path dir) throws IOException {
        TensorParallel tp = model.tensorParallel();
        ExpertParallel ep = model.expertParallel();
        model.finishParamGather(); // overlap_param_gather: the weights current in full
        Transformer full = tp.size() == 1 && ep.size() == 1 ? model : gatherFull(model, false);
        try {
            if (tp.rank() == 0 && ep.rank() == 0) {
                try {
                    ModelStore.save(full, dir);
                } catch (IOException | RuntimeException e) {
                    tp.group().abort("TP rank 0 could not save the model to " + dir + ": " + e.getMessage());
                    ep.group().abort("EP rank 0 could not save the model to " + dir + ": " + e.getMessage());
                    throw e;
                }
            }
        } finally {
            if (full != model) {
                full.close();
            }
        }
        tp.group().barrier();
        ep.group().barrier();
    }
}
