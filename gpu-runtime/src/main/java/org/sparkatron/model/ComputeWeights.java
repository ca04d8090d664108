package org.sparkatron.model;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The weights a {@link Transformer}'s passes compute from, kept current with its fp32 master weights
 * (docs/precision.md): in fp32 the master weights themselves; under BF16/FP16 (and FP8) 16-bit weights in
 * BF16/F16 elements, rounded from the master weights at the start of every pass, each unit widened into one
 * fp32 buffer just before its kernels read it ({@link WeightStaging}). With the distributed optimizer under mixed
 * precision the fp32 master is the optimizer's shard and the model's weight block is itself the 16-bit copy
 * during training; the optimizer's deferred parameter all-gather ({@code overlap_param_gather}) is started and
 * completed here, so the rules of when a weight block is current live in one place.
 *
 * <p>Stream order: everything here issues device work (rounding, widening, the gather's collectives) and never
 * waits for the device, except that completing a deferred gather waits for its communication. One rank's thread.
 */
final class ComputeWeights {
    private final ParameterSet params;
    private final Precision precision;
    private final Device device;
    private final Kernels k;
    private final Tensor half;           // mixed precision without a sharded master: the 16-bit weights (BF16/F16); else null
    private final WeightStaging staging; // mixed precision: the fp32 buffer one unit's 16-bit weights are widened into
    private final ParameterSet compute;  // what the layers read: params itself (fp32) or views of the staging buffer
    private DistributedDataParallel ddp; // its parameter all-gather; null without data parallelism in the model

    /** {@code separateCompute}: a 16-bit copy beside the fp32 weight block (mixed precision, master not sharded). */
    ComputeWeights(ParameterSet params, Precision precision, Device device, Kernels k, boolean separateCompute) {
        this.params = params;
        this.precision = precision;
        this.device = device;
        this.k = k;
        this.half = separateCompute ? device.zeros(MemoryKind.PARAMETERS, precision.format(), params.numel()) : null;
        this.staging = precision.isReduced() ? new WeightStaging(device, k, params.params()) : null;
        this.compute = staging != null ? params.withWeightViews(staging.views()) : params;
    }

    /** Whether the fp32 master weights live sharded in the distributed optimizer (the model holds 16-bit weights). */
    static boolean shardedMaster(DataParallel dp, Precision precision) {
        return dp != null && dp.config().distributedOptimizer() && precision.isReduced();
    }

    /** The data parallelism whose parameter all-gather refills the weight block (set once, after the chunks exist). */
    void gatherWith(DistributedDataParallel ddp) {
        this.ddp = ddp;
    }

    /** What the layers read: {@code params} itself in fp32, else views of the staging buffer. */
    ParameterSet compute() {
        return compute;
    }

    /** The staging buffer under mixed precision, else null. */
    WeightStaging staging() {
        return staging;
    }

    /** The fp32 master weights in fp32; else the 16-bit weights (BF16 or F16 elements) as of the last pass. */
    Tensor current() {
        return staging == null ? params.weights() : half != null ? half : params.weights();
    }

    /** Bytes of the fp32 buffer the 16-bit weights are widened into, one unit at a time (0 in fp32). */
    long stagingBytes() {
        return staging == null ? 0 : staging.bytes();
    }

    /**
     * Brings the 16-bit compute weights up to date with the fp32 master weights (nothing for FP32), at the start
     * of every pass. With the distributed optimizer the weight block is itself the 16-bit copy: kept in BF16/F16
     * elements from the first pass on (the update rounds each rank's shard into it and the all-gather moves 16-bit
     * elements); when it holds fp32 values (set from outside: a load, an initialisation, {@link #finishParamGather})
     * they are rounded into a new 16-bit block first, and the fp32 block goes back to the device.
     */
    void refresh() {
        if (staging == null) {
            if (ddp != null) {
                ddp.startParamGather(); // overlap_param_gather: the buckets are gathered as the forward reaches them
            }
            return;
        }
        if (half != null) {
            k.round(half, params.weights(), params.numel(), precision.format());
        } else if (params.weights().dtype() == DType.F32) {
            completeParamGather(); // (a gather deferred over an fp32 block: none after a pass; completed to be sure)
            Tensor block = device.allocate(MemoryKind.PARAMETERS, precision.format(), params.numel());
            k.round(block, params.weights(), params.numel(), precision.format());
            device.release(params.replaceWeights(block));
        } else if (ddp != null) {
            ddp.startParamGather();
        }
        staging.invalidate(half != null ? half : params.weights());
    }

    /** See {@link Transformer#finishParamGather()}: the weight block current in full, in fp32 elements. */
    void finishParamGather() {
        completeParamGather();
        if (staging != null && half == null && params.weights().dtype() != DType.F32) {
            Tensor block = device.allocate(MemoryKind.PARAMETERS, DType.F32, params.numel());
            k.widen(block, params.weights(), params.numel());
            device.release(params.replaceWeights(block));
        }
    }

    /** {@link DistributedDataParallel#finishParamGather}: the weight block current in full, in its element type. */
    void completeParamGather() {
        if (ddp != null) {
            ddp.finishParamGather();
        }
    }

    /** Returns the 16-bit copy and the staging buffer to the device (the weight block is the model's). */
    void close() {
        device.release(half);
        if (staging != null) {
            staging.close();
        }
    }
}
