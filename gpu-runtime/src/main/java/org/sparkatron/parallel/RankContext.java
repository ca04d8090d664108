package org.sparkatron.parallel;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.precision.Precision;
import org.sparkatron.precision.RoundingKernels;

/**
 * Everything one rank computes with, passed explicitly to the model and the training loop (no rank state
 * in statics: several ranks share a JVM in Spark's local mode): its {@link Device}, the kernels the model
 * runs (the device's, wrapped to round to 16 bits under mixed precision), its tensor-parallel group, the
 * precision, and its pipeline, data- and context-parallel groups. Process-wide native settings (OpenBLAS's thread
 * count) are not here: they are set once per process ({@link org.sparkatron.device.cpu.Blas#setThreads}).
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
    private final ContextParallel cp;

    public RankContext(Device device, TensorParallel tp, Precision precision) {
        this(device, tp, precision, null);
    }

    /** @param pp this rank's pipeline stage, or null for no pipelining */
    public RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp) {
        this(device, tp, precision, pp, null);
    }

    /**
     * @param pp this rank's pipeline stage, or null for no pipelining
     * @param dp this rank's data-parallel group and gradient reduction ({@link DistributedDataParallel} in the
     *           model), or null: the model leaves its gradients to the training loop's {@code GradientSync}
     */
    public RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp, DataParallel dp) {
        this(device, tp, precision, pp, dp, ContextParallel.none());
    }

    private RankContext(Device device, TensorParallel tp, Precision precision, PipelineParallel pp, DataParallel dp,
                        ContextParallel cp) {
        if (device == null || tp == null || precision == null || cp == null) {
            throw new IllegalArgumentException("a rank context needs a device, a tensor-parallel group and a precision");
        }
        this.device = device;
        this.tp = tp;
        this.precision = precision;
        this.pp = pp;
        this.dp = dp;
        this.cp = cp;
        this.kernels = RoundingKernels.wrap(device.kernels(), precision);
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

    /** This rank's context-parallel group ({@link ContextParallel#none()} without context parallelism). */
    public ContextParallel contextParallel() {
        return cp;
    }

    /**
     * The same rank with another tensor-parallel group, no pipelining, no data and no context parallelism (a
     * whole TP = 1 copy for checkpoints).
     */
    public RankContext withTensorParallel(TensorParallel other) {
        return new RankContext(device, other, precision, null, null);
    }

    /** The same rank as a pipeline stage. */
    public RankContext withPipeline(PipelineParallel stage) {
        return new RankContext(device, tp, precision, stage, dp, cp);
    }

    /** The same rank with data parallelism inside the model (null: none). */
    public RankContext withDataParallel(DataParallel group) {
        return new RankContext(device, tp, precision, pp, group, cp);
    }

    /** The same rank with a context-parallel group: each sequence split over the group's ranks. */
    public RankContext withContextParallel(ContextParallel group) {
        return new RankContext(device, tp, precision, pp, dp, group);
    }

    /** The same rank in another precision. */
    public RankContext withPrecision(Precision other) {
        return new RankContext(device, tp, other, pp, dp, cp);
    }

    @Override
    public String toString() {
        return device.name() + ", " + tp + (pp != null ? ", " + pp : "") + (dp != null ? ", " + dp : "")
                + (cp.size() > 1 ? ", " + cp : "") + ", " + precision.label();
    }
}
