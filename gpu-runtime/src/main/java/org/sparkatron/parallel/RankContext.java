package org.sparkatron.parallel;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.precision.Fp8Recipe;
import org.sparkatron.precision.Precision;
import org.sparkatron.precision.RoundingKernels;

/**
 * Everything one rank computes with, passed explicitly to the model and the training loop (no rank state
 * in statics: several ranks share a JVM in Spark's local mode): its {@link Device}, the kernels the model
 * runs (the device's, wrapped to round to 16 bits under mixed precision), its tensor-parallel group, the
 * precision (and FP8 recipe), and its pipeline, data-, expert- and context-parallel groups. Process-wide native
 * settings (OpenBLAS's thread count) are not here: they are set once per process
 * ({@link org.sparkatron.device.cpu.Blas#setThreads}).
 *
 * <p>Immutable. The device belongs to whoever created it and outlives the contexts made from it; several
 * contexts may share a device (a rank's model and the full TP = 1 copy it gathers to save).
 */
public final class RankContext {
    private final Device device;
    private final TensorParallel tp;
    private final Precision precision;
    private final Kernels kernels;
    private final PipelineParallel pp; // null: no pipelining
    private final DataParallel dp;     // null: gradients are the caller's to reduce (GradientSync)
    private final ExpertParallel ep;
    private final Fp8Recipe fp8;      // precision fp8: the recipe; else null
    private final ContextParallel cp;

    public RankContext(Device device, TensorParallel tp, Precision precision) {
        this(device, tp, precision, (PipelineParallel) null);
    }

    /** @param pp this rank's pipeline stage, or null for no pipelining */
    public RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp) {
        this(device, tp, precision, pp, null, ExpertParallel.none());
    }

    /**
     * @param pp this rank's pipeline stage, or null for no pipelining
     * @param dp this rank's data-parallel group and gradient reduction ({@link DistributedDataParallel} in the
     *           model), or null: the model leaves its gradients to the training loop's {@code GradientSync}
     */
    public RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp, DataParallel dp) {
        this(device, tp, precision, pp, dp, ExpertParallel.none());
    }

    /** @param ep this rank's expert-parallel groups ({@link ExpertParallel#none()}: none) */
    public RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp, ExpertParallel ep) {
        this(device, tp, precision, pp, null, ep);
    }

    /**
     * @param pp this rank's pipeline stage, or null for no pipelining
     * @param dp data parallelism inside the model, or null
     * @param ep this rank's expert-parallel groups ({@link ExpertParallel#none()} or null: none)
     */
    public RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp, DataParallel dp,
                       ExpertParallel ep) {
        this(device, tp, precision, pp, dp, ep, null);
    }

    /** One rank (no PP, DP or EP) in {@code precision} with the FP8 recipe {@code fp8} (see below). */
    public RankContext(Device device, TensorParallel tp, Precision precision, Fp8Recipe fp8) {
        this(device, tp, precision, null, null, ExpertParallel.none(), fp8);
    }

    /**
     * @param fp8 the FP8 recipe when {@code precision} is FP8 (null: Megatron's defaults, {@link Fp8Recipe#defaults()});
     *            must be null otherwise. The other parameters as above.
     */
    public RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp, DataParallel dp,
                       ExpertParallel ep, Fp8Recipe fp8) {
        this(device, tp, precision, pp, dp, ep, fp8, ContextParallel.none());
    }

    private RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp, DataParallel dp,
                        ExpertParallel ep, Fp8Recipe fp8, ContextParallel cp) {
        if (device == null || tp == null || precision == null || cp == null) {
            throw new IllegalArgumentException("a rank context needs a device, a tensor-parallel group and a precision");
        }
        if (fp8 != null && precision != Precision.FP8) {
            throw new IllegalArgumentException("an fp8 recipe applies to precision fp8, not " + precision.label());
        }
        this.device = device;
        this.tp = tp;
        this.precision = precision;
        this.pp = pp;
        this.dp = dp;
        this.ep = ep == null ? ExpertParallel.none() : ep;
        this.cp = cp;
        this.kernels = RoundingKernels.wrap(device.kernels(), precision);
        this.fp8 = precision == Precision.FP8 ? (fp8 == null ? Fp8Recipe.defaults() : fp8) : null;
    }

    /** The FP8 recipe under precision FP8, else null. */
    public Fp8Recipe fp8Recipe() {
        return fp8;
    }

    /** One rank alone (TP = 1) in fp32. */
    public static RankContext single(Device device) {
        return new RankContext(device, TensorParallel.none(), Precision.FP32);
    }

    /** One rank alone (TP = 1) in {@code precision}. */
    public static RankContext single(Device device, Precision precision) {
        return new RankContext(device, TensorParallel.none(), precision);
    }

    public Device device() {
        return device;
    }

    /** The kernels layers run: the device's, wrapped by {@link RoundingKernels} for BF16/FP16. */
    public Kernels kernels() {
        return kernels;
    }

    public TensorParallel tp() {
        return tp;
    }

    public Precision precision() {
        return precision;
    }

    /** This rank's pipeline stage, or null when the model is not pipelined. */
    public PipelineParallel pipeline() {
        return pp;
    }

    /** This rank's data-parallel group and how gradients are reduced over it, or null. */
    public DataParallel dataParallel() {
        return dp;
    }

    /** This rank's expert-parallel groups (never null; a group of one without expert parallelism). */
    public ExpertParallel expertParallel() {
        return ep;
    }

    /** This rank's context-parallel group ({@link ContextParallel#none()} without context parallelism). */
    public ContextParallel contextParallel() {
        return cp;
    }

    /**
     * The same rank with another tensor-parallel group, no pipelining, no data, expert or context parallelism (a
     * whole TP = 1 copy for checkpoints).
     */
    public RankContext withTensorParallel(TensorParallel other) {
        return new RankContext(device, other, precision, null, null, ExpertParallel.none(), fp8);
    }

    /** The same rank as a pipeline stage. */
    public RankContext withPipeline(PipelineParallel stage) {
        return new RankContext(device, tp, precision, stage, dp, ep, fp8, cp);
    }

    /** The same rank with expert-parallel groups. */
    public RankContext withExpertParallel(ExpertParallel groups) {
        return new RankContext(device, tp, precision, pp, dp, groups, fp8, cp);
    }

    /** The same rank with data parallelism inside the model (null: none). */
    public RankContext withDataParallel(DataParallel group) {
        return new RankContext(device, tp, precision, pp, group, ep, fp8, cp);
    }

    /** The same rank with a context-parallel group: each sequence split over the group's ranks. */
    public RankContext withContextParallel(ContextParallel group) {
        return new RankContext(device, tp, precision, pp, dp, ep, fp8, group);
    }

    /** The same rank in another precision. */
    public RankContext withPrecision(Precision other) {
        return new RankContext(device, tp, other, pp, dp, ep, other == Precision.FP8 ? fp8 : null, cp);
    }

    @Override
    public String toString() {
        return device.name() + ", " + tp + (pp != null ? ", " + pp : "") + (dp != null ? ", " + dp : "")
                + (ep.size() > 1 ? ", " + ep : "") + (cp.size() > 1 ? ", " + cp : "") + ", " + precision.label();
    }
}
