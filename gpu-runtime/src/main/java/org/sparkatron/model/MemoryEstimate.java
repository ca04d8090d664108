package org.sparkatron.model;

import java.util.Locale;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.MemoryStats;
import org.sparkatron.device.cpu.CpuKernels;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.AttentionCore;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.parallel.GradBuffer;
import org.sparkatron.parallel.PipelineLayout;
import org.sparkatron.parallel.pipeline.Schedule;
import org.sparkatron.precision.Fp8Recipe;
import org.sparkatron.precision.Fp8State;
import org.sparkatron.precision.Precision;

/**
 * The device memory one training rank needs, by {@link MemoryKind}, from the model's shape alone: what a
 * driver checks before launching and what the memory report prints beside the device's measured figures.
 * All sizes are 64-bit.
 *
 * <ul>
 *   <li>parameters: fp32 master weights of this rank's stage and TP shard, plus under BF16/FP16 the 16-bit
 *       compute copy ({@code halfBytes} per element: 2, real BF16/F16 elements on every device); with the
 *       distributed optimizer under mixed precision only the 16-bit weights (the fp32 master shard is optimizer
 *       state);</li>
 *   <li>gradients: fp32, one per parameter; optimizer: AdamW's two fp32 moments;</li>
 *   <li>activations: per micro-batch in flight (as many as the pipeline schedule holds at once on each of the
 *       rank's chunks), what each layer keeps for its backward under the {@link Recompute} mode, plus the
 *       chunk's input and gradient and, on the last stage, the final norm and output layer's input and its
 *       gradient; and the rank's backward and recomputation scratch and its context-parallel attention's
 *       buffers, shared by all micro-batches;</li>
 *   <li>FP8 (precision fp8): each FP8 layer's weight operand (parameters) and saved input operand
 *       (activations); the recipe state and the shared gradient operand (workspace), and on a GPU the transposed
 *       operands of the backward's FP8 GEMMs (workspace);</li>
 *   <li>workspace: under BF16/FP16 the fp32 buffer the largest unit's 16-bit weights (a layer, the embedding,
 *       the output layer) are widened into before its kernels read them ({@code WeightStaging}); token ids, per-token losses, a chunk of logits and the cross-entropy statistics (last
 *       stage), the sequence-parallel buffers, RoPE tables, the context-parallel position table, device
 *       scalars, and the CPU attention's two scratch blocks of at most 64 query rows by the keys a block
 *       attends to, one pair per thread it runs on. A GPU device's kernels keep scratch of their own that this does not count (the CUDA
 *       device's 32 MiB cuBLASLt workspace, {@code CublasLt}), so there the workspace figure is a lower bound;
 *       the CPU attention blocks it counts are then not allocated.</li>
 * </ul>
 * Under context parallelism every per-token figure is for this rank's {@code seqLen / cp} rows of each
 * sequence.
 * These are exactly the buffers the model allocates ({@code StepContractTest} checks the device's figures
 * against them). Immutable.
 */
public record MemoryEstimate(long parameters, long gradients, long optimizer, long activations, long workspace) {
    public long total() {
        return parameters + gradients + optimizer + activations + workspace;
    }

    /** The bytes of one kind. */
    public long of(MemoryKind kind) {
        return switch (kind) {
            case PARAMETERS -> parameters;
            case GRADIENTS -> gradients;
            case OPTIMIZER -> optimizer;
            case ACTIVATIONS -> activations;
            case WORKSPACE -> workspace;
        };
    }

    /** A rank's place in a context-parallel group: its size, its rank and how attention communicates. */
    public record Context(int size, int rank, ContextParallel.CommType commType) {
        /** No context parallelism. */
        public static final Context NONE = new Context(1, 0, ContextParallel.CommType.P2P);

        public static Context of(ContextParallel cp) {
            return new Context(cp.size(), cp.rank(), cp.commType());
        }
    }

    /** One rank without pipelining, one micro-batch at a time, nothing recomputed. */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, int batch, int seqLen, Precision precision,
                                    int halfBytes) {
        return of(cfg, tp, sp, PipelineLayout.single(cfg.layers()), 0, 1, batch, seqLen, precision, Recompute.NONE, halfBytes);
    }

    /**
     * The estimate for pipeline stage {@code stage} of {@code pl}, one rank of a TP group of {@code tp}
     * (sequence parallelism {@code sp}), training steps of {@code microBatches} micro-batches of {@code batch}
     * sequences of {@code seqLen} tokens in {@code precision} with {@code recompute}.
     *
     * @param halfBytes bytes per element of the model's 16-bit weights (2: BF16/F16 elements on every device; the
     *                  overloads without {@code fp8Bytes} take 4 to mean the CPU device, whose FP8 values are fp32)
     */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes) {
        return of(cfg, tp, sp, 1, pl, stage, microBatches, batch, seqLen, precision, recompute, halfBytes, null, 1);
    }

    /**
     * {@link #of(ModelConfig, int, boolean, PipelineLayout, int, int, int, int, Precision, Recompute, int)} for one
     * rank of an expert-parallel group of {@code ep} (its share of the experts; the MoE layers' dispatch
     * buffers, sized for the worst case).
     */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, int ep, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes) {
        return of(cfg, tp, sp, ep, pl, stage, microBatches, batch, seqLen, precision, recompute, halfBytes, null, 1);
    }

    /**
     * {@link #of(ModelConfig, int, boolean, PipelineLayout, int, int, int, int, Precision, Recompute, int)} for rank
     * {@code cp.rank()} of a context-parallel group (sequences of {@code seqLen} tokens, {@code seqLen / cp} rows
     * each on this rank).
     */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes,
                                    Context cp) {
        return of(cfg, tp, sp, pl, stage, microBatches, batch, seqLen, precision, recompute, halfBytes, null, 1, cp);
    }

    /**
     * {@link #of(ModelConfig, int, boolean, PipelineLayout, int, int, int, int, Precision, Recompute, int)} for a
     * model with data parallelism inside ({@link DataParallel}: {@code dp} null for none): the parameter and
     * gradient blocks in Megatron's buffer layout (padded under the distributed optimizer), and with the
     * distributed optimizer AdamW's moments, and under mixed precision the fp32 master weights, for this
     * rank's {@code 1/dpSize} shard only, the model's weight block being its 16-bit copy (Megatron's
     * {@code 2 + 4 + 12/dp} bytes per parameter, with the 16-bit copy's element size {@code halfBytes}).
     */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes,
                                    DataParallel.Config dp, int dpSize) {
        return of(cfg, tp, sp, 1, pl, stage, microBatches, batch, seqLen, precision, recompute, halfBytes, dp, dpSize);
    }

    /**
     * Both: data parallelism inside the model over a group of {@code dpSize} (under context parallelism the
     * DP x CP group, which holds replicas of the same parameters), and rank {@code cp.rank()} of a CP group.
     */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes,
                                    DataParallel.Config dp, int dpSize, Context cp) {
        return of(cfg, tp, sp, 1, pl, stage, microBatches, batch, seqLen, precision, recompute, halfBytes, dp, dpSize,
                precision == Precision.FP8 ? Fp8Recipe.defaults() : null, halfBytes == 4 ? 4 : 1, cp);
    }

    /** The estimate with expert parallelism {@code ep} and data parallelism inside the model ({@code dp}) together. */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, int ep, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes,
                                    DataParallel.Config dp, int dpSize) {
        return of(cfg, tp, sp, ep, pl, stage, microBatches, batch, seqLen, precision, recompute, halfBytes, dp, dpSize,
                precision == Precision.FP8 ? Fp8Recipe.defaults() : null, halfBytes == 4 ? 4 : 1);
    }

    /**
     * With precision FP8, also the FP8 operands of the transformer layers' GEMMs under {@code fp8}: each FP8
     * layer's weight copy (parameters), its saved input (activations; per micro-batch in flight, or one per layer
     * under full recomputation), the shared output-gradient operand and the recipe state (workspace), and on a GPU
     * ({@code fp8Bytes} 1) the backward's transposed copies of the FP8 weight, input and output gradient
     * (workspace: the largest of each).
     *
     * @param fp8Bytes bytes per FP8 element on the target device (4 on the CPU, which stores FP8 values in fp32; 1 on a GPU)
     */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, int ep, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes,
                                    DataParallel.Config dp, int dpSize, Fp8Recipe fp8, int fp8Bytes) {
        return of(cfg, tp, sp, ep, pl, stage, microBatches, batch, seqLen, precision, recompute, halfBytes, dp, dpSize,
                fp8, fp8Bytes, Context.NONE);
    }

    /** All of the above together, for rank {@code cp.rank()} of a context-parallel group ({@link Context#NONE}: none). */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, int ep, PipelineLayout pl, int stage, int microBatches,
                                    int batch, int seqLen, Precision precision, Recompute recompute, int halfBytes,
                                    DataParallel.Config dp, int dpSize, Fp8Recipe fp8, int fp8Bytes, Context cp) {
        ModelLayout.validate(cfg, tp);
        ModelLayout.validateExperts(cfg, ep, tp);
        ContextParallel.validate(seqLen, cp.size());
        int local = seqLen / cp.size(); // this rank's rows of each sequence
        boolean split = sp && tp > 1;
        ParameterSet.Builder layout = ModelLayout.layout(cfg, tp, ep, pl, stage);
        long numel = layout.numel();
        long owned = numel; // elements of optimizer state
        java.util.List<ParameterSet.Param> placed = layout.params();
        if (dp != null) {
            GradBuffer plan = ModelLayout.gradBuffer(cfg, layout.params(), pl, stage, dp, dpSize);
            numel = plan.numel();
            owned = plan.ownedNumel();
            placed = layout.relayout(plan.offsets(), plan.numel()).params();
        }
        boolean shardedMaster = dp != null && dp.distributedOptimizer() && precision.isReduced();
        long params = shardedMaster ? (long) halfBytes * numel
                : 4 * numel + (precision.isReduced() ? (long) halfBytes * numel : 0);
        long optimizer = (shardedMaster ? 12 : 8) * owned; // moments (and the fp32 master shard)
        long n = (long) batch * local;
        if (split && n % tp != 0) {
            throw new IllegalArgumentException("sequence parallelism needs the batch's token count (batch x sequence length = "
                    + n + ") divisible by the tensor-parallel size " + tp);
        }
        long nl = split ? n / tp : n;
        long c = cfg.hidden();
        long hd = cfg.headDim();
        long hl = cfg.heads() / tp;
        long kvl = cfg.kvHeads() / tp;
        long fl = cfg.ffnHidden() / tp;
        boolean layerNorm = cfg.family() != ModelConfig.Family.LLAMA;
        long upWidth = layerNorm ? fl : 2 * fl;
        long qkv = n * (hl + 2 * kvl) * hd;
        long attention = n * hl * hd + (long) batch * hl * local; // output and log-sum-exp
        long attentionPart = 4 * nl * c + (layerNorm ? 4 : 2) * nl + (split ? n * c : 0) + qkv + attention;
        long denseMlp = (split ? n * c : 0) + n * upWidth + n * fl;
        MoeShape moe = cfg.isMoe() ? MoeShape.of(cfg, tp, ep, Math.toIntExact(n)) : null;
        long moeMlp = moe == null ? 0 : MoeMlp.keptElements(moe, split);
        boolean dense = BlockActivations.Shape.of(cfg, org.sparkatron.parallel.TensorParallel.none(), 1, 1).dense();
        Schedule schedule = Schedule.of(pl.stages(), pl.virtualStages(), microBatches);
        long activations = 3 * nl * c + qkv + n * hl * hd + (dense ? n * upWidth + n * fl : 0) // backward scratch
                + (recompute == Recompute.SELECTIVE ? attention : 0)
                + (recompute == Recompute.FULL ? attentionPart + (dense ? denseMlp : 0) + moeMlp : 0)
                + (moe == null ? 0 : MoeMlp.scratchElements(moe))
                + AttentionCore.bufferElements(cp.commType(), cp.size(), batch, local, (int) hl, (int) kvl, (int) hd);
        long workspace = 8 + 8 + 40                                          // model scalars, trainer step scalars
                + (moe == null ? 0 : 8L * MoeStep.STATS + MoeMlp.scratchWorkspaceBytes(moe) + MoeStep.tallyBytes(cfg)) // MoE figures
                + (cfg.family().usesRope() ? 4L * cfg.maxPositions() * hd : 0) // cos and sin tables
                + (cp.size() > 1 ? 4L * local : 0)                          // CP position table
                + 4 * 2L * cpuAttentionScratch(cp, local, (long) batch * kvl) // CPU attention scratch
                + (precision.isReduced() ? 4 * WeightStaging.scratchElements(placed) : 0); // one unit's weights widened to fp32
        boolean holdsLast = pl.isLast(stage, pl.virtualStages() - 1);
        for (int chunk = 0; chunk < pl.virtualStages(); chunk++) {
            boolean first = pl.isFirst(stage, chunk);
            boolean last = pl.isLast(stage, chunk);
            long kept = 0;
            for (int i = pl.firstLayer(stage, chunk); i < pl.endLayer(stage, chunk); i++) {
                boolean moeLayer = cfg.moe().isMoeLayer(i);
                kept += switch (recompute) {
                    case NONE -> attentionPart + (moeLayer ? moeMlp : denseMlp);
                    case SELECTIVE -> attentionPart - attention + (moeLayer ? moeMlp : denseMlp);
                    case FULL -> nl * c; // the output: the next layer's input
                };
            }
            long slot = kept + 2 * nl * c // input, gradient
                    + (last ? nl * c + (layerNorm ? 2 : 1) * nl + (split ? 2 * n * c : nl * c) : 0); // final norm, head input/grad
            activations += schedule.maxInFlight(stage, chunk) * slot;
            workspace += schedule.maxInFlight(stage, chunk) * 4 * ((first || last ? 2 * n : 0) + (last ? n : 0)); // tokens, losses
        }
        if (holdsLast) {
            long vocabLocal = cfg.paddedVocab(tp) / tp;
            long rows = RankBuffers.logitsRows(n, vocabLocal);
            workspace += 4 * (rows * vocabLocal + 3 * rows); // logits, cross-entropy max and sums
        }
        if (split) {
            long sequenceGrads = 0;
            for (ParameterSet.Param p : layout.params()) {
                sequenceGrads += p.tp() == TpRole.SEQUENCE ? p.numel() : 0;
            }
            workspace += 4 * (n * c + sequenceGrads); // tp.rows, packed SP gradients
        }
        long activationBytes = 4 * activations;
        if (precision == Precision.FP8) {
            int fp8Blocks = 0; // the model's: the recipe state covers them all on every stage
            for (int i = 0; i < cfg.layers(); i++) {
                fp8Blocks += fp8.fp8Layer(i, cfg.layers()) ? 1 : 0;
            }
            int stageFp8 = 0;         // this stage's FP8 blocks: their weight copies
            long savedSlots = 0;      // FP8 blocks x micro-batches in flight: the saved FP8 inputs
            for (int chunk = 0; chunk < pl.virtualStages(); chunk++) {
                int chunkFp8 = 0;
                for (int i = pl.firstLayer(stage, chunk); i < pl.endLayer(stage, chunk); i++) {
                    chunkFp8 += fp8.fp8Layer(i, cfg.layers()) ? 1 : 0;
                }
                stageFp8 += chunkFp8;
                savedSlots += (long) chunkFp8 * schedule.maxInFlight(stage, chunk);
            }
            long fh = cfg.ffnHidden() / tp;
            long fup = cfg.family() == ModelConfig.Family.LLAMA ? 2 * fh : fh;
            long hdim = cfg.headDim();
            long hloc = cfg.heads() / tp;
            long qkvWidth = (hloc + 2 * (cfg.kvHeads() / tp)) * hdim;
            long ch = cfg.hidden();
            long tokens = (long) batch * local;
            long weights = qkvWidth * ch + ch * hloc * hdim + fup * ch + ch * fh;
            long inputs = tokens * (ch + hloc * hdim + ch + fh);
            long widestOut = Math.max(Math.max(qkvWidth, fup), ch);
            params += stageFp8 * fp8Bytes * weights;
            // each micro-batch in flight keeps its FP8 inputs and their 4 inverse scales (Fp8Linear.Saved); under full
            // recomputation the backward casts them again, into each layer's one buffer
            activationBytes += recompute == Recompute.FULL ? stageFp8 * fp8Bytes * inputs : savedSlots * (fp8Bytes * inputs + 16);
            workspace += Fp8State.stateBytes(fp8, 4 * fp8Blocks) + (stageFp8 > 0 ? fp8Bytes * tokens * widestOut : 0);
            if (stageFp8 > 0 && fp8Bytes == 1) {
                // a GPU's FP8 GEMMs take only "TN" operands: the backward transposes the FP8 weight, input and output
                // gradient into three scratch buffers (CudaKernels), each as large as the largest of its kind
                long widestIn = Math.max(ch, Math.max(hloc * hdim, fh));
                long largestWeight = Math.max(Math.max(qkvWidth * ch, ch * hloc * hdim), Math.max(fup * ch, ch * fh));
                workspace += largestWeight + tokens * widestIn + tokens * widestOut;
            }
        }
        return new MemoryEstimate(params, 4 * numel, optimizer, activationBytes, workspace);
    }

    /**
     * The CPU attention's scratch elements (each of two kinds): the largest block this rank computes, for
     * {@code t} local rows per sequence, once per thread it runs on ({@code units}: sequences x local kv heads). Local and ring: the causal block of its rows; all-gather: its second
     * query chunk against the {@code (2cp - r)} chunks it sees.
     */
    private static long cpuAttentionScratch(Context cp, int t, long units) {
        if (cp.size() == 1 || cp.commType() == ContextParallel.CommType.P2P) {
            return CpuKernels.attentionScratchElements(t, t, units);
        }
        int chunk = t / 2;
        return CpuKernels.attentionScratchElements(chunk, (2 * cp.size() - cp.rank()) * chunk, units);
    }

    /** One line: each kind in MiB and the total. */
    public String summary() {
        return String.format(Locale.ROOT, "parameters %s, gradients %s, optimizer %s, activations %s, workspace %s; total %s",
                mib(parameters), mib(gradients), mib(optimizer), mib(activations), mib(workspace), mib(total()));
    }

    /** The estimate beside a device's measured (requested) figures, as one JSON object. */
    public String toJson(MemoryStats measured) {
        StringBuilder sb = new StringBuilder("{");
        for (MemoryKind k : MemoryKind.values()) {
            String name = k.name().toLowerCase(Locale.ROOT);
            sb.append(String.format(Locale.ROOT, "\"%s\": %d, \"%s_predicted\": %d, ", name, measured.requested(k), name, of(k)));
        }
        return sb.append(String.format(Locale.ROOT, "\"reserved\": %d, \"peak\": %d}", measured.reserved(), measured.peakInUse()))
                .toString();
    }

    static String mib(long bytes) {
        return String.format(Locale.ROOT, "%.1f MiB", bytes / 1048576.0);
    }
}
