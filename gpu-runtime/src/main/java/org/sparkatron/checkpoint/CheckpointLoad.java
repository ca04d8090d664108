package org.sparkatron.checkpoint;

import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.Map;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.optim.DistributedOptimizer;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One rank's load of a checkpoint in two parts: {@link #read} reads and checks its files into the model's weights
 * and the optimizer's moments (or, for the distributed optimizer, two temporary blocks), and {@link #finish}
 * makes the state the checkpoint's (the moments' shards, the fp32 master weights, the step, the dropout counter,
 * the FP8 recipe state). Between the two a collective resume asks every rank whether its read succeeded: only
 * when all did does any rank finish; otherwise each calls {@link #abandon} and reads an older checkpoint over
 * whatever the failed one left in the blocks (a read that throws leaves them unspecified; the step, counter and
 * recipe state are untouched until {@code finish}).
 *
 * <p>Threading: one rank's thread. Blocking: file (and for remote storage, network) I/O in {@code read}.
 */
final class CheckpointLoad {
    private final CheckpointMetadata meta;
    private final Transformer model;
    private final AdamW opt;
    private final Tensor tmpM;
    private final Tensor tmpV;
    private boolean released;

    private CheckpointLoad(CheckpointMetadata meta, Transformer model, AdamW opt, Tensor tmpM, Tensor tmpV) {
        this.meta = meta;
        this.model = model;
        this.opt = opt;
        this.tmpM = tmpM;
        this.tmpV = tmpV;
    }

    /**
     * Reads the files {@code reader} planned (each once, its size and CRC32C checked: {@link ShardReader#read}).
     *
     * @throws CheckpointException naming the file and the problem when one is missing or damaged
     */
    static CheckpointLoad read(CheckpointStorage fs, String dir, CheckpointMetadata meta, ShardReader reader, Transformer model,
                               AdamW opt) throws IOException {
        Map<String, ShardFiles.Local> local = new LinkedHashMap<>();
        Tensor m = null;
        Tensor v = null;
        boolean ok = false;
        try {
            for (String f : reader.files()) {
                local.put(f, ShardFiles.fetch(fs, fs.child(dir, f), meta.files().get(f)));
            }
            model.finishParamGather(); // a gather deferred by the last step (overlap_param_gather) must not follow the load
            if (opt != null && opt.sharded()) {
                // the distributed optimizer: whole moments into temporary blocks; finish keeps this rank's shard of them
                DistributedCheckpoint.shardedBy(model);
                m = model.device().zeros(MemoryKind.OPTIMIZER, DType.F32, model.params().numel());
                v = model.device().zeros(MemoryKind.OPTIMIZER, DType.F32, model.params().numel());
                reader.read(local, model.device(), model.params().weights(), m, v);
            } else {
                reader.read(local, model.device(), model.params().weights(), opt == null ? null : opt.firstMoment(),
                        opt == null ? null : opt.secondMoment());
            }
            ok = true;
            return new CheckpointLoad(meta, model, opt, m, v);
        } finally {
            for (ShardFiles.Local l : local.values()) {
                try {
                    l.close();
                } catch (IOException e) {
                    // a staged temporary copy; nothing else refers to it
                }
            }
            if (!ok) {
                release(model, m, v);
            }
        }
    }

    /** Makes the read state the model's and optimizer's; call once, after every rank's read succeeded. */
    CheckpointMetadata finish() {
        try {
            if (tmpM != null) {
                DistributedDataParallel ddp = DistributedCheckpoint.shardedBy(model);
                DistributedOptimizer.scatterState(opt, ddp, tmpM, opt.firstMoment());
                DistributedOptimizer.scatterState(opt, ddp, tmpV, opt.secondMoment());
                opt.reloadMasterWeights(); // the fp32 master shard from the fp32 weights just read
            }
        } finally {
            abandon();
        }
        if (opt != null) {
            opt.setStep(meta.step());
        }
        model.setTrainSteps(meta.dropoutSteps());
        String fp8 = meta.extra().get(org.sparkatron.precision.Fp8State.CHECKPOINT_KEY);
        if (model.fp8() != null && fp8 != null) {
            model.fp8().restoreState(fp8); // another FP8 layer set or history length: fresh recipe state (docs/precision.md)
        }
        return meta;
    }

    /** Frees the temporary blocks (the distributed optimizer's) without applying them. Idempotent. */
    void abandon() {
        if (!released) {
            released = true;
            release(model, tmpM, tmpV);
        }
    }

    private static void release(Transformer model, Tensor m, Tensor v) {
        if (m != null) {
            model.device().release(m);
        }
        if (v != null) {
            model.device().release(v);
        }
    }
}
