package org.sparkatron.model;

import java.util.Locale;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.MemoryStats;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.precision.Precision;

/**
 * The device memory one training rank needs, by {@link MemoryKind}, from the model's shape alone: what a
 * driver checks before launching and what the memory report prints beside the device's measured figures.
 * All sizes are 64-bit.
 *
 * <ul>
 *   <li>parameters: fp32 master weights, plus under BF16/FP16 the 16-bit compute copy
 *       ({@code halfBytes} per element: 4 on the CPU device, which stores 16-bit values in fp32; 2 on a
 *       GPU);</li>
 *   <li>gradients: fp32, one per parameter;</li>
 *   <li>optimizer: AdamW's two fp32 moments;</li>
 *   <li>activations: what forward saves for backward and backward's scratch, for one micro-batch, with
 *       this rank's TP shapes (sequence parallelism splits the residual stream's rows); exactly the
 *       buffers the model allocates;</li>
 *   <li>workspace: token ids, per-token losses, a chunk of logits, the cross-entropy statistics, the
 *       sequence-parallel gather buffers, RoPE tables, device scalars, and the CPU attention's two
 *       {@code T x T} scratch blocks (a GPU's kernels have their own scratch; the figure is then an
 *       upper bound).</li>
 * </ul>
 * Immutable.
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

    /**
     * The estimate for one rank of a TP group of {@code tp} (sequence parallelism {@code sp}) training on
     * micro-batches of {@code batch} sequences of {@code seqLen} tokens in {@code precision}.
     *
     * @param halfBytes bytes per element of 16-bit data on the target device (4 on the CPU, 2 on a GPU)
     */
    public static MemoryEstimate of(ModelConfig cfg, int tp, boolean sp, int batch, int seqLen, Precision precision,
                                    int halfBytes) {
        Transformer.validate(cfg, tp);
        boolean split = sp && tp > 1;
        long numel = Transformer.layout(cfg, tp).numel();
        long params = 4 * numel + (precision.isReduced() ? (long) halfBytes * numel : 0);
        long n = (long) batch * seqLen;
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
        long upWidth = cfg.family() == ModelConfig.Family.LLAMA ? 2 * fl : fl;
        long qkvWidth = (hl + 2 * kvl) * hd;
        long block = 6 * nl * c + 4 * nl  // norm1, attProj, resid, norm2, down, output; mean and rstd of both norms
                + n * qkvWidth + n * hl * hd + (long) batch * hl * seqLen // qkv, attention output, log-sum-exp
                + n * upWidth + n * fl           // MLP up (gate|up for Llama) and activation
                + (split ? 2 * n * c : 0);       // the gathered inputs of the two column-parallel layers
        long model = 4 * nl * c + 2 * nl  // embedded, normF, dresid, dnormF; meanF, rstdF
                + (split ? 2 * n * c : 0)  // headX, dheadX
                + 2 * nl * c + n * qkvWidth + n * hl * hd + n * upWidth + n * fl; // backward scratch
        long activations = 4 * (cfg.layers() * block + model);
        long vocabLocal = cfg.paddedVocab(tp) / tp;
        long chunk = Math.max(1, Math.min(n, Transformer.LOGITS_CHUNK_FLOATS / vocabLocal));
        long sequenceGrads = 0;
        for (ParameterSet.Param p : Transformer.layout(cfg, tp).params()) {
            sequenceGrads += p.tp() == TpRole.SEQUENCE ? p.numel() : 0;
        }
        long workspace = 4 * (2 * n + n + chunk * vocabLocal + 3 * chunk) // tokens, losses, logits, CE max/sums
                + 8 + 8 + 16                                              // model scalars, trainer step scalars
                + (cfg.family().usesRope() ? 4L * cfg.maxPositions() * hd : 0) // cos and sin tables
                + (split ? 4 * (n * c + sequenceGrads) : 0)               // tp.rows, packed SP gradients
                + 4 * 2L * seqLen * seqLen;                               // CPU attention scratch
        return new MemoryEstimate(params, 4 * numel, 8 * numel, activations, workspace);
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
