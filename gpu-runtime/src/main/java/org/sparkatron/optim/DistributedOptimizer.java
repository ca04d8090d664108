package org.sparkatron.optim;

import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.tensor.Tensor;

/**
 * ZeRO-1, as Megatron Core's {@code DistributedOptimizer}: each data-parallel rank keeps AdamW's moments (and,
 * under mixed precision, the fp32 master weights) for its shard of every gradient bucket only, updates that
 * shard from the reduce-scattered gradients, and all-gathers the updated parameters (the model's weight
 * block: its 16-bit copy under mixed precision) bucket by bucket. Memory per parameter, Megatron's
 * accounting: {@code 4 + 4 + 8/dp} bytes in fp32, {@code 2 + 4 + 12/dp} with 16-bit weights.
 *
 * <p>The gradient norm over the shards (each parameter counted once across data-parallel shards, tensor-
 * parallel duplicates and pipeline copies) is the model's ({@link Transformer#gradSquaredNorm}); clipping and
 * unscaling touch the shard only ({@link DistributedDataParallel#ownedGradients}).
 *
 * <p>Threading and blocking: the rank's thread; {@link #update} and {@link #gatherMasterWeights} are
 * collectives of the data-parallel group.
 */
public final class DistributedOptimizer {
    private final Transformer model;
    private final DistributedDataParallel ddp;
    private final AdamW adam;

    /** AdamW over {@code model}'s shard; the master weights start from the model's current weights. */
    public DistributedOptimizer(Transformer model, float beta1, float beta2, float eps, float weightDecay) {
        DistributedDataParallel d = model.dataParallel();
        if (d == null || !d.sharded()) {
            throw new IllegalArgumentException("the distributed optimizer needs a model built with "
                    + "DataParallel.Config.distributedOptimizer");
        }
        this.model = model;
        this.ddp = d;
        this.adam = new AdamW(model.params(), model.kernels(), beta1, beta2, eps, weightDecay, d.ownedRanges(),
                model.precision().isReduced() ? model.precision().format() : null);
    }

    /** The shard's AdamW state (moments, master weights, step). */
    public AdamW adam() {
        return adam;
    }

    /**
     * One update of this rank's shard with learning rate {@code lr}, then the all-gather of the parameters:
     * at once, or with {@code overlap_param_gather} during the next forward pass
     * ({@link DistributedDataParallel#paramsUpdated}).
     */
    public void update(float lr) {
        update(lr, 1f);
    }

    /** {@link #update(float)} on this rank's gradient shard multiplied by {@code gradScale} ({@link AdamW#update(float, float)}). */
    public void update(float lr, float gradScale) {
        adam.update(lr, gradScale);
        ddp.paramsUpdated();
    }

    /**
     * The master shard from the model's weights, after they were set from outside (a load without optimizer
     * state, an initialisation after the optimizer was built). Local to the rank.
     */
    public void reloadModelParams() {
        adam.reloadMasterWeights();
    }

    /**
     * Puts the fp32 master weights into the model's weight block on every rank (each writes its shard, then the
     * buckets are all-gathered), for a save of the model in fp32 or a comparison; the next forward pass rounds
     * them to 16 bits again. In fp32 the weight block is the master: only a deferred parameter all-gather is
     * completed. Collective.
     */
    public void gatherMasterWeights() {
        model.finishParamGather(); // the weight block current (overlap_param_gather) and in fp32 elements (fp32: that is all)
        if (adam.masterWeights() == null) {
            return;
        }
        adam.writeMasterWeights();
        ddp.gatherParams(model.params().weights());
    }

    /**
     * Puts the whole of a sharded state tensor ({@code state}: {@code adam}'s m, v or master, in state layout)
     * into {@code block}, a tensor in the model's parameter-block layout: each rank writes its owned ranges
     * (padding included), then the buckets are all-gathered over their groups. For checkpoints, which store
     * state by parameter name and so load under any DP size. Collective over the data-parallel group;
     * stream-ordered device work.
     */
    public static void gatherState(AdamW adam, DistributedDataParallel ddp, Tensor state, Tensor block) {
        Device device = adam.device();
        long at = 0;
        for (long[] r : ddp.ownedRanges()) {
            if (r[1] > 0) {
                device.copy(block.slice(r[0], r[1]), state.slice(at, r[1]));
            }
            at += r[1];
        }
        ddp.gatherParams(block);
    }

    /**
     * The inverse of {@link #gatherState}: this rank's owned ranges of {@code block} (a whole state tensor in
     * parameter-block layout, read from a checkpoint) into its shard {@code state}. Local to the rank.
     */
    public static void scatterState(AdamW adam, DistributedDataParallel ddp, Tensor block, Tensor state) {
        Device device = adam.device();
        long at = 0;
        List<long[]> owned = ddp.ownedRanges();
        for (long[] r : owned) {
            if (r[1] > 0) {
                device.copy(state.slice(at, r[1]), block.slice(r[0], r[1]));
            }
            at += r[1];
        }
    }
}
