package org.sparkatron.model;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.Collections;
import java.util.List;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.Mapping;
import org.sparkatron.parallel.Mappings;
import org.sparkatron.parallel.PipelineParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.parallel.pipeline.ForwardOnly;
import org.sparkatron.parallel.pipeline.Schedule;
import org.sparkatron.precision.Fp8State;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The passes of a {@link Transformer} rank: what surrounds a run of the pipeline schedule ({@link StepRunner}).
 * A pass checks its token ids, sizes the shared buffers for its shape, brings the compute weights up to date
 * ({@link ComputeWeights}), opens the MoE and FP8 pass state and the data-parallel step, runs the schedule
 * (training: Megatron's 1F1B or interleaved schedule; evaluation: forward only), completes a deferred parameter
 * gather, and reduces the loss over the pipeline and context-parallel groups. It also holds the settings that
 * shape every pass (recompute, dropout, the micro-batch counter that keys dropout masks). Kept apart from the
 * model's construction and state so the step's order of operations reads in one place.
 *
 * <p>Stream order, threading and failure: as {@link Transformer}'s (device work only, except the synchronising
 * convenience forms; one rank's thread; collectives of the rank's TP, PP and CP groups).
 */
final class ModelPasses {
    private final ModelConfig cfg;
    private final RankContext ctx;
    private final Device device;
    private final Kernels k;
    private final TensorParallel tp;
    private final PipelineParallel pp;
    private final ContextParallel cp;
    private final ExpertParallel ep;
    private final List<ModelChunk> chunks;
    private final StepRunner runner;
    private final RankBuffers buffers;
    private final Workspace ws;
    private final ComputeWeights weights;
    private final DistributedDataParallel ddp; // null: the training loop reduces gradients
    private final MoeStep moeStep;             // MoE models: the pass settings and statistics the MoE layers share
    private final Fp8State fp8;                // precision fp8: the recipe state of the blocks' FP8 GEMMs; else null
    private final Tensor scalars;              // F64 [1] for the synchronising convenience methods
    private final ByteBuffer scalarsHost = ByteBuffer.allocateDirect(8).order(ByteOrder.nativeOrder());
    private Recompute recompute = Recompute.NONE;
    private DropoutRng dropout;
    private long dropoutRowOffset;
    private long trainSteps;

    ModelPasses(ModelConfig cfg, RankContext ctx, PipelineParallel pp, List<ModelChunk> chunks, StepRunner runner,
                RankBuffers buffers, Workspace ws, ComputeWeights weights, DistributedDataParallel ddp, MoeStep moeStep,
                Fp8State fp8) {
        this.cfg = cfg;
        this.ctx = ctx;
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.tp = ctx.tp();
        this.pp = pp;
        this.cp = ctx.contextParallel();
        this.ep = ctx.expertParallel();
        this.chunks = chunks;
        this.runner = runner;
        this.buffers = buffers;
        this.ws = ws;
        this.weights = weights;
        this.ddp = ddp;
        this.moeStep = moeStep;
        this.fp8 = fp8;
        this.scalars = device.allocate(MemoryKind.WORKSPACE, DType.F64, 1);
    }

    /** The device scalar the synchronising convenience forms read ({@link #readScalar()}). */
    Tensor scalars() {
        return scalars;
    }

    void setRecompute(Recompute mode) {
        this.recompute = mode;
    }

    Recompute recompute() {
        return recompute;
    }

    void setDropout(float p, long seed, long rowOffset) {
        this.dropout = p > 0 ? new DropoutRng(p, seed) : null;
        this.dropoutRowOffset = rowOffset;
    }

    long trainSteps() {
        return trainSteps;
    }

    void setTrainSteps(long steps) {
        this.trainSteps = steps;
    }

    /** See {@link Transformer#forwardBackward(List, int, int, float, Tensor, int, double)}: the step orchestration. */
    void forwardBackward(List<int[]> microBatches, int b, int t, float gradScale, Tensor lossAcc, int slot,
                         double lossWeight) {
        for (int[] s : microBatches) {
            check(s, b, t);
        }
        BlockActivations.Shape s = shape(b, t);
        weights.refresh(); // every step starts here: the optimizer may have moved the master weights
        Schedule schedule = Schedule.of(pp.size(), pp.chunks(), microBatches.size());
        if (moeStep != null) {
            k.zero(moeStep.stats);
            moeStep.begin(true, gradScale, lossWeight);
        }
        if (ddp != null) {
            ddp.beginStep();
        }
        if (fp8 != null) {
            fp8.beginPass(true);
        }
        runner.run(schedule, microBatches, s, recompute, new StepRunner.Pass(true, gradScale, lossAcc, slot, lossWeight,
                trainSteps, new TransformerBlock.DropKey(dropout, 0, dropoutRowOffset)));
        weights.completeParamGather();
        trainSteps += microBatches.size();
        sumOverPipeline(lossAcc.slice(slot, 1));
        averageOverContext(lossAcc.slice(slot, 1));
        if (moeStep != null) {
            sumOverPipeline(moeStep.stats); // each stage holds its own layers' share
        }
    }

    /** One micro-batch: {@link #forwardBackward(List, int, int, float, Tensor, int, double)} of a list of one. */
    void forwardBackward(int[] samples, int b, int t, float gradScale, Tensor lossAcc, int slot, double lossWeight) {
        forwardBackward(Collections.singletonList(samples), b, t, gradScale, lossAcc, slot, lossWeight);
    }

    /** See {@link Transformer#forwardBackward(int[], int, int, float)}. */
    double forwardBackward(int[] samples, int b, int t, float gradScale) {
        k.zero(scalars);
        forwardBackward(samples, b, t, gradScale, scalars, 0, 1.0);
        if (ddp != null) {
            ddp.finishGradSync(); // a complete step's gradients: reduced over the data-parallel group
        }
        return readScalar();
    }

    private void sumOverPipeline(Tensor scalar) {
        if (pp.size() > 1) {
            pp.group().allReduce(scalar, ReduceOp.SUM); // only the last stage's is not zero
        }
    }

    /** Each CP rank's loss is its own tokens' mean; they hold equal numbers of tokens, so the mean of means is the whole's. */
    private void averageOverContext(Tensor scalar) {
        if (cp.size() > 1) {
            cp.group().allReduce(scalar, ReduceOp.AVG);
        }
    }

    /** The scratch scalar, read after the device caught up (synchronises). */
    double readScalar() {
        device.download(scalarsHost, scalars);
        return scalarsHost.getDouble(0);
    }

    /** See {@link Transformer#loss(int[], int, int, float[])}. */
    double loss(int[] samples, int b, int t, float[] lossesOut) {
        if (lossesOut != null && !pp.holdsLast()) {
            throw new IllegalArgumentException("per-token losses exist on the last pipeline stage only");
        }
        check(samples, b, t);
        BlockActivations.Shape s = shape(b, t);
        weights.refresh();
        k.zero(scalars);
        if (moeStep != null) {
            moeStep.begin(false, 0f, 0);
        }
        ModelChunk lastChunk = chunks.get(chunks.size() - 1);
        if (fp8 != null) {
            fp8.beginPass(false);
        }
        runner.run(new ForwardOnly(pp.size(), pp.chunks(), 1), Collections.singletonList(samples), s, recompute,
                new StepRunner.Pass(false, 0f, scalars, 0, 1.0, 0, TransformerBlock.DropKey.NONE));
        weights.completeParamGather();
        if (lossesOut != null) {
            tokenLosses(lastChunk.lastForward().losses, s, lossesOut);
        }
        sumOverPipeline(scalars);
        averageOverContext(scalars);
        return readScalar();
    }

    /** This rank's per-token losses, or under CP every rank's gathered and put in sequence order, into {@code out}. */
    private void tokenLosses(Tensor losses, BlockActivations.Shape s, float[] out) {
        int n = s.n();
        int size = cp.size();
        Tensor all = losses.slice(0, n);
        if (size > 1) {
            all = ws.get("cp.losses", size, n).view((long) size * n);
            cp.group().allGather(losses.slice(0, n), all);
        }
        ByteBuffer host = ByteBuffer.allocateDirect(4 * size * n).order(ByteOrder.nativeOrder());
        device.download(host, all);
        FloatBuffer f = host.asFloatBuffer();
        if (size == 1) {
            f.get(out, 0, n);
            return;
        }
        for (int j = 0; j < size; j++) {
            int[] pos = ContextParallel.positions(s.seq(), size, j);
            for (int bi = 0; bi < s.b(); bi++) {
                for (int l = 0; l < s.t(); l++) {
                    out[bi * s.seq() + pos[l]] = f.get(j * n + bi * s.t() + l);
                }
            }
        }
    }

    /** See {@link Transformer#logits(int[], int, int)}. */
    float[] logits(int[] samples, int b, int t) {
        if (pp.size() > 1 || cp.size() > 1) {
            throw new UnsupportedOperationException("logits() runs without pipelining or context parallelism; use loss() "
                    + "for evaluation under PP or CP");
        }
        check(samples, b, t);
        BlockActivations.Shape s = shape(b, t);
        weights.refresh();
        ModelChunk chunk = chunks.get(0);
        if (moeStep != null) {
            moeStep.begin(false, 0f, 0);
        }
        MicroBatch mb = chunk.acquire(s, recompute);
        try {
            runner.upload(mb.tokens, samples, s);
            k.zero(scalars);
            if (fp8 != null) {
                fp8.beginPass(false);
            }
            chunk.forward(mb, false, 0f, scalars, 0, 1.0);
            weights.completeParamGather();
            int n = s.n();
            int v = cfg.vocabSize();
            int vocabLocal = cfg.paddedVocab(tp.size()) / tp.size();
            int vp = vocabLocal * tp.size();
            int rows0 = RankBuffers.logitsRows(n, vocabLocal);
            float[] out = new float[Math.multiplyExact(n, v)];
            Tensor local = ws.get("logits.local", rows0, vocabLocal);
            for (int r0 = 0; r0 < n; r0 += rows0) {
                int rows = Math.min(rows0, n - r0);
                if (weights.staging() != null) {
                    weights.staging().use(cfg.tiedEmbeddings() ? "embed" : "head"); // the forward left it widened; to be sure
                }
                k.linearForward(local, mb.headX.narrowRows(r0, rows),
                        weights.compute().weight(cfg.tiedEmbeddings() ? "embed" : "head"), null, rows, cfg.hidden(), vocabLocal);
                Tensor full = ws.get("logits.full", rows, vp);
                Mapping gather = new Mappings.GatherFromTensorRegion(ctx, rows, vocabLocal);
                gather.forward(local.slice(0, (long) rows * vocabLocal), full);
                gather.close();
                ByteBuffer host = ByteBuffer.allocateDirect(4 * rows * vp).order(ByteOrder.nativeOrder());
                device.download(host, full);
                FloatBuffer z = host.asFloatBuffer();
                for (int r = 0; r < rows; r++) {
                    z.get(r * vp, out, (r0 + r) * v, v);
                }
            }
            return out;
        } finally {
            chunk.release(mb);
        }
    }

    /**
     * The micro-batch shape of {@code b} x {@code t} tokens, with the buffers every rank shares allocated for it;
     * refuses what this model cannot run (too long, a token count SP or CP cannot split, FP8 row counts).
     */
    BlockActivations.Shape shape(int b, int t) {
        if (t > cfg.maxPositions()) {
            throw new IllegalArgumentException("sequence length " + t + " exceeds the model's " + cfg.maxPositions() + " positions");
        }
        // refuses a token count SP cannot split, or sequences CP cannot split
        BlockActivations.Shape s = BlockActivations.Shape.of(cfg, tp, ep.size(), cp, b, t);
        if (fp8 != null && fp8.layers() > 0) { // FP8 GEMMs need the token rows a multiple of 16
            int firstFp8 = 0;
            while (!ctx.fp8Recipe().fp8Layer(firstFp8, cfg.layers())) {
                firstFp8++;
            }
            org.sparkatron.precision.Fp8Linear.requireRows((long) s.n(), "layers." + firstFp8 + ".attn.qkv");
        }
        buffers.prepare(s, recompute);
        return s;
    }

    /** Refuses ids outside the vocabulary, naming the sample and position, before any device work. */
    private void check(int[] samples, int b, int t) {
        if (samples == null) {
            return;
        }
        if (samples.length < b * (t + 1)) {
            throw new IllegalArgumentException("batch needs " + b * (t + 1) + " tokens, got " + samples.length);
        }
        for (int s = 0; s < b * (t + 1); s++) {
            int id = samples[s];
            if (id < 0 || id >= cfg.vocabSize()) {
                throw new IllegalArgumentException("token id " + id + " (sample " + s / (t + 1) + ", position " + s % (t + 1)
                        + ") is outside the vocabulary of " + cfg.vocabSize());
            }
        }
    }

    /** Returns the scratch scalar to the device. */
    void close() {
        device.release(scalars);
    }
}
