package org.sparkatron.model;

import java.util.List;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.optim.AdamW;
import org.sparkatron.parallel.CommLane;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.GradBuffer;
import org.sparkatron.parallel.PipelineParallel;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.precision.Fp8State;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The gradient side of a {@link Transformer} rank across its parallel layout, apart from the passes that
 * accumulate it: the data-parallel wiring (Megatron's DDP buckets reduced during the backward, and with the
 * distributed optimizer the shard this rank owns), the completion of a step's gradients (sequence-parallel and
 * tied-embedding sums, the FP8 pass's end) and the whole model's gradient norm, counted once per parameter
 * whatever the TP, PP, EP and DP layout.
 *
 * <p>Stream order: device work and collectives only; nothing waits for the device. Every method is a collective
 * of the groups it names (TP, the embedding group, EP, DP, PP), called by all their ranks in the same order.
 * One rank's thread.
 */
final class ModelGradients {
    private final ModelConfig cfg;
    private final ParameterSet params;
    private final Device device;
    private final Kernels k;
    private final TensorParallel tp;
    private final PipelineParallel pp;
    private final ExpertParallel ep;
    private final Workspace ws;
    private final Fp8State fp8;                  // precision fp8: its pass ends with the step's gradients; else null
    private final DistributedDataParallel ddp;   // null: the training loop reduces gradients (GradientSync)
    private final List<AdamW.Piece> ownedPieces; // with the distributed optimizer: this rank's gradient shard, per parameter
    private final Tensor normScratch;            // F64 [1]: this rank's part of the squared gradient norm, then the sum

    /**
     * {@code dp} and {@code plan} (Megatron's gradient buffer order) null without data parallelism in the model;
     * with it the buckets are wired to {@code runner} (reduced as the last backward of each chunk makes them
     * final) and, under {@code overlap_param_gather}, to the chunks (each bucket waited for before the first
     * layer that reads it).
     */
    ModelGradients(ModelConfig cfg, ParameterSet params, Device device, Kernels k, TensorParallel tp, PipelineParallel pp,
                   ExpertParallel ep, Workspace ws, Fp8State fp8, DataParallel dp, GradBuffer plan, StepRunner runner,
                   List<ModelChunk> chunks) {
        this.cfg = cfg;
        this.params = params;
        this.device = device;
        this.k = k;
        this.tp = tp;
        this.pp = pp;
        this.ep = ep;
        this.ws = ws;
        this.fp8 = fp8;
        this.normScratch = device.allocate(MemoryKind.WORKSPACE, DType.F64, 1);
        if (dp == null) {
            this.ddp = null;
            this.ownedPieces = null;
            return;
        }
        boolean overlap = dp.config().overlapGradReduce() && dp.size() > 1;
        // the device's communication queue (a GPU's second communication stream) runs the reductions; the CPU
        // device's calls are done when they return, so there a thread of its own does
        CommLane lane = overlap ? CommLane.forDevice(device, "sparkatron-dp-" + device.name() + "-" + dp.rank())
                : CommLane.inline();
        this.ddp = new DistributedDataParallel(params, plan, new Communicator[] {dp.group()}, lane, dp.config().overlapGradReduce(),
                dp.config().overlapParamGather());
        runner.setGradReadyHook(ddp);
        if (ddp.overlapsParamGather()) {
            // the weight block's buckets arrive during the forward: each waited for before the first layer that
            // reads it (under mixed precision they arrive as 16-bit elements: ComputeWeights.refresh)
            for (ModelChunk c : chunks) {
                c.setForwardPreHook(ddp);
            }
        }
        this.ownedPieces = plan.sharded() ? AdamW.pieces(params, ddp.ownedRanges()) : null;
    }

    /** The model's data parallelism, or null when the training loop reduces gradients itself. */
    DistributedDataParallel dataParallel() {
        return ddp;
    }

    /** See {@link Transformer#finishGradients()}. */
    void finish() {
        if (tp.sequenceParallel()) {
            long total = 0;
            for (ParameterSet.Param p : params.params()) {
                total += p.tp() == TpRole.SEQUENCE ? p.numel() : 0;
            }
            Tensor packed = ws.get("sequence.grads", 1, Math.toIntExact(total));
            long at = 0;
            for (ParameterSet.Param p : params.params()) {
                if (p.tp() == TpRole.SEQUENCE) {
                    device.copy(packed.slice(at, p.numel()), params.grad(p.name()));
                    at += p.numel();
                }
            }
            tp.group().allReduce(packed, ReduceOp.SUM);
            at = 0;
            for (ParameterSet.Param p : params.params()) {
                if (p.tp() == TpRole.SEQUENCE) {
                    device.copy(params.grad(p.name()), packed.slice(at, p.numel()));
                    at += p.numel();
                }
            }
        }
        if (tiedAcrossStages()) {
            pp.embeddingGroup().allReduce(params.grad("embed"), ReduceOp.SUM);
        }
        if (fp8 != null) {
            // delayed scaling: the step's amaxes reduced over TP and the replicas, then the scales for the next step;
            // here, after the gradient reduction, so no MAX all-reduce runs beside in-flight gradient buckets
            fp8.finishPass();
        }
    }

    /** A tied embedding whose input and output copies are on different pipeline stages. */
    private boolean tiedAcrossStages() {
        return cfg.tiedEmbeddings() && pp.size() > 1 && pp.embeddingGroup() != null && pp.embeddingGroup().size() > 1;
    }

    /** See {@link Transformer#gradSquaredNorm(Tensor, int)}. */
    void squaredNorm(Tensor acc, int slot) {
        k.zero(normScratch);
        boolean skipEmbed = tiedAcrossStages() && !pp.holdsFirst();
        if (ownedPieces != null) { // distributed optimizer: this rank's shard of each parameter, then over the DP group
            for (AdamW.Piece piece : ownedPieces) {
                ParameterSet.Param p = params.params().get(piece.param());
                if ((p.tp() == TpRole.SPLIT || tp.rank() == 0) && !(skipEmbed && p.name().equals("embed"))) {
                    k.sumOfSquares(params.grads().slice(piece.offset(), piece.length()), normScratch, 0);
                }
            }
            ddp.sumOverGroups(normScratch);
        } else if (ep.size() > 1) {
            // dense gradients are the same on every EP rank (data-parallel for them): count them on EP rank 0;
            // experts differ per EP rank: count every rank's, then sum over the EP group
            for (ParameterSet.Param p : params.params()) {
                boolean expert = params.isExpert(p);
                if ((expert || ep.rank() == 0) && (p.tp() == TpRole.SPLIT || tp.rank() == 0)
                        && !(skipEmbed && p.name().equals("embed"))) {
                    k.sumOfSquares(params.grad(p.name()), normScratch, 0);
                }
            }
            ep.group().allReduce(normScratch, ReduceOp.SUM);
        } else if (tp.rank() == 0 && !skipEmbed) {
            k.sumOfSquares(params.grads(), normScratch, 0);
        } else {
            for (ParameterSet.Param p : params.params()) {
                if ((p.tp() == TpRole.SPLIT || tp.rank() == 0) && !(skipEmbed && p.name().equals("embed"))) {
                    k.sumOfSquares(params.grad(p.name()), normScratch, 0);
                }
            }
        }
        if (tp.size() > 1) {
            tp.group().allReduce(normScratch, ReduceOp.SUM);
        }
        if (pp.size() > 1) {
            pp.group().allReduce(normScratch, ReduceOp.SUM); // each stage holds its own parameters' share
        }
        device.copy(acc.slice(slot, 1), normScratch);
    }

    /** Stops the data parallelism's communication (its lane) and returns the scratch to the device. */
    void close() {
        if (ddp != null) {
            ddp.close();
        }
        device.release(normScratch);
    }
}
