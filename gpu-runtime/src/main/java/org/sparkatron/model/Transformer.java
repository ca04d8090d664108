package org.sparkatron.model;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Device;
import org.sparkatron.device.DeviceMemoryException;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.parallel.Mapping;
import org.sparkatron.parallel.Mappings;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.VocabParallelCrossEntropy;
import org.sparkatron.parallel.VocabParallelEmbedding;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * A decoder-only language model (GPT-2 or Llama family) on one rank of a tensor-parallel group:
 * vocab-parallel embedding, {@code L} blocks, final norm, vocab-parallel output projection and
 * cross-entropy, each with an explicit backward. TP = 1 ({@link #Transformer(ModelConfig, Device)}) is
 * the same code with a group of one, where every mapping is the identity.
 *
 * <p>Memory: everything lives on the rank's {@link Device} ({@link RankContext}): this rank's parameter
 * shards and gradients are one block each ({@link ParameterSet}); activations are allocated per batch
 * shape ({@link #prepare}) and reused across steps, so a step allocates nothing. The output layer and loss
 * run in row chunks so the {@code [B*T, V/tp]} logits never exist at once during training, and no rank
 * ever holds a full row of logits while training. {@link #close()} returns all of it to the device.
 *
 * <p>Stream order: a training pass ({@link #forwardBackward(int[], int, int, float, Tensor, int, double)},
 * {@link #finishGradients}, {@link #gradSquaredNorm(Tensor, int)}) only issues kernels, device copies and
 * collectives, and leaves its figures in device scalars; it never waits for the device. The convenience
 * forms that return a {@code double} ({@link #forwardBackward(int[], int, int, float)}, {@link #loss},
 * {@link #logits}, {@link #gradSquaredNorm()}) synchronise, for tests and tools.
 *
 * <p>Precision ({@link Precision}, docs/precision.md): {@link #params()} always holds fp32 master weights
 * and the fp32 gradient block. Under BF16/FP16 the layers compute from a second weight block, the master
 * weights rounded to 16 bits, refreshed at the start of every forward pass (so any change to the master
 * weights, by the optimizer, a checkpoint load or {@link #initialize}, is seen by the next pass), and the
 * kernels are wrapped in {@link RoundingKernels}, which rounds activations and activation gradients.
 *
 * <p>Threading and blocking: one rank, one thread. Under TP every public method that computes
 * ({@link #forwardBackward}, {@link #loss}, {@link #logits}, {@link #finishGradients},
 * {@link #gradSquaredNorm}, {@link #initialize}) is a collective of the TP group: all its ranks call it
 * with the same batch, and a failed peer makes it throw the communicator's exception.
 */
public final class Transformer {
    /**
     * Rows of logits computed at once: bounds the logits buffer to 256 MB. Larger chunks matter: the
     * output layer's weight gradient is one GEMM per chunk with the chunk's rows as its inner dimension,
     * and short inner dimensions run that GEMM at a fraction of peak.
     */
    static final long LOGITS_CHUNK_FLOATS = 64L << 20;

    private final ModelConfig cfg;
    private final RankContext ctx;
    private final Device device;
    private final Kernels k;
    private final TensorParallel tp;
    private final ParameterSet params;
    private final Precision precision;
    private final ParameterSet compute; // what the layers read: params itself (fp32) or its rounded twin
    private final Workspace ws;
    private final List<TransformerBlock> blocks = new ArrayList<>();
    private final Tensor ropeCos; // [maxPos, hd/2] (Llama only)
    private final Tensor ropeSin;
    private final String headName;
    private final int vocabLocal;
    private final VocabParallelEmbedding embedding;
    private final VocabParallelCrossEntropy crossEntropy;
    private final Mapping headInput;
    private final Tensor normScratch; // F64 [1]: this rank's part of the squared gradient norm, then the TP sum
    private final Tensor scalars;     // F64 [1] for the synchronising convenience methods
    private final ByteBuffer scalarsHost = ByteBuffer.allocateDirect(8).order(ByteOrder.nativeOrder());
    private DropoutRng dropout;
    private long dropoutRowOffset;
    private long trainSteps;

    private int b;
    private int t;
    private Tensor tokens;    // [2N] I32 on the device: inputs then targets
    private Tensor tokensHost; // [2N] I32 host staging for the upload
    private Tensor inputs;    // [N] I32 (view of tokens)
    private Tensor targets;   // [N] I32 (view of tokens)
    private Tensor embedded;  // [Nl, C]
    private Tensor normF;     // [Nl, C]
    private Tensor meanF;     // [Nl]
    private Tensor rstdF;     // [Nl]
    private Tensor headX;     // [N, C] the output layer's input (normF itself without SP)
    private Tensor losses;    // [N]
    private Tensor logits;    // [chunk, V/tp]
    private Tensor dresid;    // [Nl, C]
    private Tensor dnormF;    // [Nl, C]
    private Tensor dheadX;    // [N, C] partial gradient of headX (dnormF itself without SP)
    private TransformerBlock.BackwardScratch scratch;

    /** A model on one rank alone (TP = 1, fp32) on {@code device}. */
    public Transformer(ModelConfig cfg, Device device) {
        this(cfg, RankContext.single(device));
    }

    /**
     * This rank's part of a model split over the context's TP group, computing in the context's precision
     * (for BF16/FP16 the kernels round to 16 bits and a 16-bit-rounded copy of the weights is kept beside
     * the fp32 master weights). Needs the attention heads, the key/value heads and the MLP width divisible
     * by the TP size; key/value heads are never replicated, so fewer key/value heads than TP ranks is
     * refused. A model that cannot fit the device is refused before anything is allocated
     * ({@link DeviceMemoryException}, with the bytes it needs).
     */
    public Transformer(ModelConfig cfg, RankContext ctx) {
        TensorParallel tp = ctx.tp();
        validate(cfg, tp.size());
        this.cfg = cfg;
        this.ctx = ctx;
        this.device = ctx.device();
        this.precision = ctx.precision();
        this.k = ctx.kernels();
        this.tp = tp;
        ParameterSet.Builder layout = layout(cfg, tp.size());
        long weightBytes = Math.multiplyExact(layout.numel(), 4L) * (precision.isReduced() ? 3 : 2);
        if (weightBytes > device.capacityBytes()) {
            throw new DeviceMemoryException(device.name(), cfg.family().name().toLowerCase(java.util.Locale.ROOT) + " model of "
                    + layout.numel() + " parameters per rank (weights and gradients"
                    + (precision.isReduced() ? ", and a 16-bit compute copy" : "") + ")", weightBytes, device.capacityBytes());
        }
        this.params = layout.build(device);
        this.compute = precision.isReduced()
                ? params.withWeights(device.zeros(MemoryKind.PARAMETERS, DType.F32, params.numel())) : params;
        this.ws = new Workspace(device);
        this.normScratch = device.allocate(MemoryKind.WORKSPACE, DType.F64, 1);
        this.scalars = device.allocate(MemoryKind.WORKSPACE, DType.F64, 1);
        this.headName = cfg.tiedEmbeddings() ? "embed" : "head";
        this.vocabLocal = cfg.paddedVocab(tp.size()) / tp.size();
        if (cfg.family().usesRope()) {
            int half = cfg.headDim() / 2;
            Tensor cs = Tensor.allocateHost(DType.F32, cfg.maxPositions(), half);
            Tensor sn = Tensor.allocateHost(DType.F32, cfg.maxPositions(), half);
            FloatBuffer c = cs.floats();
            FloatBuffer si = sn.floats();
            for (int pos = 0; pos < cfg.maxPositions(); pos++) {
                for (int j = 0; j < half; j++) {
                    double angle = pos * Math.pow(cfg.ropeTheta(), -2.0 * j / cfg.headDim());
                    c.put(pos * half + j, (float) Math.cos(angle));
                    si.put(pos * half + j, (float) Math.sin(angle));
                }
            }
            ropeCos = device.allocate(MemoryKind.WORKSPACE, DType.F32, cfg.maxPositions(), half);
            ropeSin = device.allocate(MemoryKind.WORKSPACE, DType.F32, cfg.maxPositions(), half);
            device.upload(ropeCos, cs.hostBuffer());
            device.upload(ropeSin, sn.hostBuffer());
        } else {
            ropeCos = null;
            ropeSin = null;
        }
        for (int i = 0; i < cfg.layers(); i++) {
            blocks.add(new TransformerBlock(cfg, ctx, compute, i, ropeCos, ropeSin, ws));
        }
        embedding = new VocabParallelEmbedding(ctx, vocabLocal, cfg.hidden(), compute.weight("embed"), params.grad("embed"), ws);
        crossEntropy = new VocabParallelCrossEntropy(ctx, vocabLocal, cfg.vocabSize());
        headInput = tp.sequenceParallel() ? new Mappings.GatherFromSequenceRegion(ctx) : new Mappings.CopyToTensorRegion(ctx);
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
     * The parameter layout of one rank of a TP group of {@code tpSize}: embeddings, blocks in order, final
     * norm, untied head. For tpSize = 1 these are the full parameters, as saved in checkpoints.
     */
    static ParameterSet.Builder layout(ModelConfig cfg, int tpSize) {
        ParameterSet.Builder bld = ParameterSet.builder();
        int vocabRows = cfg.paddedVocab(tpSize) / tpSize;
        bld.add("embed", TpRole.SPLIT, vocabRows, cfg.hidden());
        if (cfg.family() == ModelConfig.Family.GPT2) {
            bld.add("pos", TpRole.SEQUENCE, cfg.maxPositions(), cfg.hidden());
        }
        for (int i = 0; i < cfg.layers(); i++) {
            TransformerBlock.declare(bld, cfg, i, tpSize);
        }
        bld.add("norm_f.w", TpRole.SEQUENCE, cfg.hidden());
        if (cfg.family().hasBiases()) {
            bld.add("norm_f.b", TpRole.SEQUENCE, cfg.hidden());
        }
        if (!cfg.tiedEmbeddings()) {
            bld.add("head", TpRole.SPLIT, vocabRows, cfg.hidden());
        }
        return bld;
    }

    public ModelConfig config() {
        return cfg;
    }

    /** The rank this model runs on: device, kernels, TP group, precision. */
    public RankContext context() {
        return ctx;
    }

    public Device device() {
        return device;
    }

    /** This rank's parameters: its shards of split parameters, whole replicated ones. */
    public ParameterSet params() {
        return params;
    }

    /**
     * The kernels this model runs on (one rank's): under BF16/FP16 the rounding wrapper, whose optimizer
     * and gradient utilities ({@code adamw}, {@code sumOfSquares}, {@code sum}, {@code scale}, {@code fill},
     * {@code zero}) are the wrapped fp32 kernels'.
     */
    public Kernels kernels() {
        return k;
    }

    /**
     * What this rank needs for micro-batches of {@code b} x {@code t} tokens, from the model's shape
     * ({@link MemoryEstimate}), with the 16-bit element size of this device's compute weights.
     */
    public MemoryEstimate memoryEstimate(int b, int t) {
        return MemoryEstimate.of(cfg, tp.size(), tp.sequenceParallel(), b, t, precision, compute.weights().dtype().bytes());
    }

    /** The precision this model computes in. */
    public Precision precision() {
        return precision;
    }

    /**
     * The weights the layers compute from: {@link #params()}'s weights for FP32, else their 16-bit-rounded
     * copy as of the last forward pass. For tests and tools.
     */
    public Tensor computeWeights() {
        return compute.weights();
    }

    /** Brings the 16-bit compute weights up to date with the fp32 master weights (nothing for FP32). */
    private void refreshComputeWeights() {
        if (compute != params) {
            k.round(compute.weights(), params.weights(), params.numel(), precision.format());
        }
    }

    public TensorParallel tensorParallel() {
        return tp;
    }

    /**
     * Hidden dropout with probability {@code p} on both branch outputs of every block, during
     * {@link #forwardBackward} only (not {@link #loss} / {@link #logits}); p = 0 turns it off (the default).
     * Masks are keyed by ({@code seed}, training-step count, layer, global element), so every TP layout
     * drops the same elements as one rank does ({@link DropoutRng}). {@code rowOffset} is the index of this
     * data-parallel replica's first token row in the global batch (dp rank x batch x sequence length):
     * replicas then drop different elements, exactly those a single rank drops over the global batch.
     */
    public void setDropout(float p, long seed, long rowOffset) {
        this.dropout = p > 0 ? new DropoutRng(p, seed) : null;
        this.dropoutRowOffset = rowOffset;
    }

    /**
     * Forward-backward passes run so far: the step counter of the dropout masks, saved in checkpoints so a
     * resumed run drops the same elements as an uninterrupted one.
     */
    public long trainSteps() {
        return trainSteps;
    }

    /** Restores {@link #trainSteps()} (resume from a checkpoint). */
    public void setTrainSteps(long steps) {
        this.trainSteps = steps;
    }

    /** {@link #setDropout(float, long, long)} for a model without data parallelism. */
    public void setDropout(float p, long seed) {
        setDropout(p, seed, 0);
    }

    /**
     * GPT-2-style initialisation, deterministic in {@code seed}: weights N(0, 0.02), the two residual output
     * projections N(0, 0.02 / sqrt(2 L)), biases 0, norm weights 1, padded vocabulary rows 0. Under TP each
     * rank initialises the full model and keeps its shard, so a TP run starts exactly where one rank would.
     */
    public void initialize(long seed) {
        if (tp.size() == 1) {
            Tensor host = device.toHost(params.weights()); // the block itself on the CPU device: no copy
            initialize(cfg, params.params(), host, seed);
            device.fromHost(params.weights(), host);
            return;
        }
        ParameterSet.Builder fullLayout = layout(cfg, 1);
        ParameterSet full = fullLayout.buildWeightsOnly(device);
        Tensor host = device.toHost(full.weights());
        initialize(cfg, full.params(), host, seed);
        device.fromHost(full.weights(), host);
        TpShards.scatter(cfg, full, params, tp.rank(), tp.size(), false);
        full.close();
    }

    /** Writes the initial values of {@code layout}'s parameters into the host block {@code w}, in windows. */
    private static void initialize(ModelConfig cfg, List<ParameterSet.Param> layout, Tensor w, long seed) {
        SplittableRandom rng = new SplittableRandom(seed);
        double residualStd = 0.02 / Math.sqrt(2.0 * cfg.layers());
        for (ParameterSet.Param p : layout) {
            String n = p.name();
            boolean norm = n.contains("norm");
            boolean bias = n.endsWith(".b");
            double std = n.endsWith("attn.out.w") || n.endsWith("mlp.down.w") ? residualStd : 0.02;
            long rows = p.shape()[0];
            long rowLen = p.numel() / Math.max(1, rows);
            FloatBuffer out = w.slice(p.offset(), p.numel()).floats(); // one parameter fits a buffer
            for (int i = 0; i < p.numel(); i++) {
                float v;
                if (norm) {
                    v = bias ? 0f : 1f;
                } else if (bias) {
                    v = 0f;
                } else if ((n.equals("embed") || n.equals("head")) && i / rowLen >= cfg.vocabSize()) {
                    v = 0f;
                } else {
                    v = (float) (rng.nextGaussian() * std);
                }
                out.put(i, v);
            }
        }
    }

    /**
     * Allocates the activations for batches of {@code b} sequences of {@code t} tokens now (the first pass
     * would otherwise), so the memory figures are complete before training starts. Buffers of another
     * shape go back to the device first.
     */
    public void prepare(int b, int t) {
        allocate(b, t);
    }

    private void allocate(int b, int t) {
        if (t > cfg.maxPositions()) {
            throw new IllegalArgumentException("sequence length " + t + " exceeds the model's " + cfg.maxPositions() + " positions");
        }
        if (this.b == b && this.t == t) {
            return;
        }
        int n = Math.multiplyExact(b, t);
        int nl = tp.localRows(n); // refuses a token count SP cannot split, before any state changes
        releaseActivations();
        this.b = b;
        this.t = t;
        int c = cfg.hidden();
        tokens = device.allocate(MemoryKind.WORKSPACE, DType.I32, 2L * n);
        tokensHost = device.allocateHostStaging(DType.I32, 2L * n);
        inputs = tokens.slice(0, n);
        targets = tokens.slice(n, n);
        embedded = activation(nl, c);
        normF = activation(nl, c);
        meanF = activation(nl);
        rstdF = activation(nl);
        headX = tp.sequenceParallel() ? activation(n, c) : normF;
        losses = device.allocate(MemoryKind.WORKSPACE, DType.F32, n);
        logits = device.allocate(MemoryKind.WORKSPACE, DType.F32, chunkRows(), vocabLocal);
        dresid = activation(nl, c);
        dnormF = activation(nl, c);
        dheadX = tp.sequenceParallel() ? activation(n, c) : dnormF;
        scratch = new TransformerBlock.BackwardScratch(cfg, ctx, n);
        crossEntropy.prepare(chunkRows());
        for (TransformerBlock blk : blocks) {
            blk.allocate(b, t);
        }
    }

    private Tensor activation(int... shape) {
        return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
    }

    private void releaseActivations() {
        if (b == 0) {
            return;
        }
        for (Tensor x : new Tensor[] {tokens, embedded, normF, meanF, rstdF, losses, logits, dresid, dnormF}) {
            device.release(x);
        }
        if (tp.sequenceParallel()) {
            device.release(headX);
            device.release(dheadX);
        }
        scratch.release();
        for (TransformerBlock blk : blocks) {
            blk.release();
        }
        b = 0;
        t = 0;
    }

    /**
     * Returns all of this model's device memory (parameters, gradients, activations, workspace) to the
     * device. The model must not be used afterwards.
     */
    public void close() {
        releaseActivations();
        ws.close();
        crossEntropy.close();
        device.release(normScratch);
        device.release(scalars);
        device.release(ropeCos);
        device.release(ropeSin);
        if (compute != params) {
            device.release(compute.weights());
        }
        params.close();
    }

    private int chunkRows() {
        return (int) Math.max(1, Math.min((long) b * t, LOGITS_CHUNK_FLOATS / vocabLocal));
    }

    /**
     * Loads a batch of {@code b} samples of {@code t + 1} tokens each (row-major in {@code samples}):
     * inputs are tokens [0, t), targets tokens [1, t + 1). Ids outside the vocabulary are refused.
     */
    private void loadBatch(int[] samples, int b, int t) {
        if (samples.length < b * (t + 1)) {
            throw new IllegalArgumentException("batch needs " + b * (t + 1) + " tokens, got " + samples.length);
        }
        for (int s = 0; s < b; s++) {
            for (int i = 0; i <= t; i++) {
                int id = samples[s * (t + 1) + i];
                if (id < 0 || id >= cfg.vocabSize()) {
                    throw new IllegalArgumentException("token id " + id + " (sample " + s + ", position " + i
                            + ") is outside the vocabulary of " + cfg.vocabSize());
                }
            }
        }
        allocate(b, t);
        refreshComputeWeights(); // every pass starts here: the optimizer may have moved the master weights
        int n = b * t;
        IntBuffer staged = tokensHost.ints();
        for (int s = 0; s < b; s++) {
            staged.put(s * t, samples, s * (t + 1), t);         // inputs: tokens [0, t)
            staged.put(n + s * t, samples, s * (t + 1) + 1, t); // targets: tokens [1, t + 1)
        }
        device.upload(tokens, tokensHost.hostBuffer());
    }

    /** Embedding, blocks and final norm over this rank's residual rows; returns the last block's output. */
    private Tensor forwardBlocks(DropoutRng drop) {
        int n = b * t;
        int nl = tp.localRows(n);
        embedding.forward(inputs, n, embedded);
        if (cfg.family() == ModelConfig.Family.GPT2) {
            k.addPositions(embedded, compute.weight("pos"), tp.firstLocalRow(n), nl, t, cfg.hidden()); // rounded by RoundingKernels
        }
        Tensor x = embedded;
        for (TransformerBlock blk : blocks) {
            blk.forward(x, drop, trainSteps, dropoutRowOffset);
            x = blk.output();
        }
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormForward(normF, rstdF, x, compute.weight("norm_f.w"), nl, cfg.hidden(), cfg.normEps());
        } else {
            k.layerNormForward(normF, meanF, rstdF, x, compute.weight("norm_f.w"), compute.weight("norm_f.b"), nl,
                    cfg.hidden(), cfg.normEps());
        }
        headInput.forward(normF, headX);
        return x;
    }

    /**
     * One forward and backward pass over a batch; gradients are ADDED to {@code params().grads()} scaled
     * by {@code gradScale} (1 for a single micro-batch; 1/m for m accumulated micro-batches), and the batch's
     * mean cross-entropy (nats) times {@code lossWeight} is added to {@code lossAcc[slot]} (an F64 device
     * scalar). Issues device work only: nothing waits for the device. Under sequence parallelism call
     * {@link #finishGradients()} once after the last micro-batch.
     */
    public void forwardBackward(int[] samples, int b, int t, float gradScale, Tensor lossAcc, int slot, double lossWeight) {
        loadBatch(samples, b, t);
        trainSteps++;
        Tensor last = forwardBlocks(dropout);
        int n = b * t;
        int nl = tp.localRows(n);
        int c = cfg.hidden();
        Tensor head = compute.weight(headName);
        Tensor dhead = params.grad(headName);
        // output layer + loss + their backward, one chunk of rows at a time
        for (int r0 = 0; r0 < n; r0 += chunkRows()) {
            int rows = Math.min(chunkRows(), n - r0);
            Tensor x = headX.narrowRows(r0, rows);
            k.linearForward(logits, x, head, null, rows, c, vocabLocal);
            crossEntropy.forward(logits, losses.slice(r0, rows), targets.slice(r0, rows), rows, true, gradScale / n);
            k.linearBackward(dheadX.narrowRows(r0, rows), false, dhead, null, logits, x, head, rows, c, vocabLocal);
        }
        headInput.backward(dheadX, dnormF);
        k.fill(dresid, 0f);
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormBackward(dresid, params.grad("norm_f.w"), dnormF, last, compute.weight("norm_f.w"), rstdF, nl, c);
        } else {
            k.layerNormBackward(dresid, params.grad("norm_f.w"), params.grad("norm_f.b"), dnormF, last,
                    compute.weight("norm_f.w"), meanF, rstdF, nl, c);
        }
        for (int i = blocks.size() - 1; i >= 0; i--) {
            blocks.get(i).backward(dresid, scratch);
        }
        if (cfg.family() == ModelConfig.Family.GPT2) {
            k.positionsBackward(params.grad("pos"), dresid, tp.firstLocalRow(n), nl, t, c);
        }
        embedding.backward(dresid, inputs, n);
        k.sum(losses, n, lossAcc, slot, lossWeight / n);
    }

    /**
     * {@link #forwardBackward(int[], int, int, float, Tensor, int, double)} that synchronises and returns the
     * batch's mean cross-entropy in nats (the same on every TP rank). For tests and tools.
     */
    public double forwardBackward(int[] samples, int b, int t, float gradScale) {
        k.zero(scalars);
        forwardBackward(samples, b, t, gradScale, scalars, 0, 1.0);
        return readScalar();
    }

    private double readScalar() {
        device.download(scalarsHost, scalars);
        return scalarsHost.getDouble(0);
    }

    /**
     * Completes the gradients after the last micro-batch of a step: under sequence parallelism the
     * replicated parameters that act on the residual stream (norms, position embeddings) saw only this
     * rank's rows, so their gradients are summed over the TP group (forgetting this is the classic SP bug).
     * Without SP (and at TP = 1) it does nothing. Call it exactly once per step, before the data-parallel
     * reduction and the gradient norm.
     */
    public void finishGradients() {
        if (!tp.sequenceParallel()) {
            return;
        }
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

    /**
     * The squared L2 norm of the whole model's gradient, the same on every TP rank: split parameters count
     * on every rank (each holds a different slice), replicated ones only on TP rank 0, so nothing is
     * counted twice (Megatron's {@code param_is_not_tensor_parallel_duplicate}). At TP = 1 this is the
     * sum of squares of the gradient block.
     */
    public void gradSquaredNorm(Tensor acc, int slot) {
        k.zero(normScratch);
        if (tp.rank() == 0) {
            k.sumOfSquares(params.grads(), normScratch, 0);
        } else {
            for (ParameterSet.Param p : params.params()) {
                if (p.tp() == TpRole.SPLIT) {
                    k.sumOfSquares(params.grad(p.name()), normScratch, 0);
                }
            }
        }
        if (tp.size() > 1) {
            tp.group().allReduce(normScratch, ReduceOp.SUM);
        }
        device.copy(acc.slice(slot, 1), normScratch);
    }

    /** {@link #gradSquaredNorm(Tensor, int)}, synchronised and returned. For tests and tools. */
    public double gradSquaredNorm() {
        gradSquaredNorm(scalars, 0);
        return readScalar();
    }

    /** Forward only: the mean cross-entropy in nats of a batch; {@code lossesOut} (if non-null) gets each token's. */
    public double loss(int[] samples, int b, int t, float[] lossesOut) {
        loadBatch(samples, b, t);
        forwardBlocks(null);
        int n = b * t;
        for (int r0 = 0; r0 < n; r0 += chunkRows()) {
            int rows = Math.min(chunkRows(), n - r0);
            k.linearForward(logits, headX.narrowRows(r0, rows), compute.weight(headName), null, rows, cfg.hidden(), vocabLocal);
            crossEntropy.forward(logits, losses.slice(r0, rows), targets.slice(r0, rows), rows, false, 0f);
        }
        k.zero(scalars);
        k.sum(losses, n, scalars, 0, 1.0 / n);
        double mean = readScalar();
        if (lossesOut != null) {
            ByteBuffer host = ByteBuffer.allocateDirect(4 * n).order(ByteOrder.nativeOrder());
            device.download(host, losses.slice(0, n));
            host.asFloatBuffer().get(lossesOut, 0, n);
        }
        return mean;
    }

    /**
     * Forward only: logits [b*t, vocabSize] (padding removed) for samples of t+1 tokens, gathered from the
     * vocabulary shards onto every rank. For tests and tools.
     */
    public float[] logits(int[] samples, int b, int t) {
        loadBatch(samples, b, t);
        forwardBlocks(null);
        int n = b * t;
        int v = cfg.vocabSize();
        int vp = vocabLocal * tp.size();
        float[] out = new float[n * v];
        for (int r0 = 0; r0 < n; r0 += chunkRows()) {
            int rows = Math.min(chunkRows(), n - r0);
            k.linearForward(logits, headX.narrowRows(r0, rows), compute.weight(headName), null, rows, cfg.hidden(), vocabLocal);
            Tensor full = ws.get("logits.full", rows, vp);
            Mapping gather = new Mappings.GatherFromTensorRegion(ctx, rows, vocabLocal);
            gather.forward(logits.slice(0, (long) rows * vocabLocal), full);
            gather.close();
            ByteBuffer host = ByteBuffer.allocateDirect(4 * rows * vp).order(ByteOrder.nativeOrder());
            device.download(host, full);
            FloatBuffer z = host.asFloatBuffer();
            for (int r = 0; r < rows; r++) {
                z.get(r * vp, out, (r0 + r) * v, v);
            }
        }
        return out;
    }
}
