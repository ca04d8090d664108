package org.sparkatron.spark;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.function.Consumer;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.Evaluator;
import org.sparkatron.train.IntervalStats;
import org.sparkatron.train.ModelFlops;
import org.sparkatron.train.Trainer;

/**
 * What one rank tells the driver about its training (rank 0 sends, every rank takes part in the collectives):
 * a {@code start} line (first step after a resume, parameters, FLOPs per step, the measured peak), each step's
 * metrics line, one {@code interval} line every {@code log_interval} steps ({@link IntervalStats}: averaged
 * loss, throughput, TFLOP/s per rank, MFU, the largest process memory over the ranks) and each {@code eval}
 * line. Every line rank 0 sends is also kept for its {@link RankReport}.
 *
 * <p>Training thread of the rank only. {@link #start} and {@link #step} are collectives over {@code world}
 * (the peak is measured by every rank at once, so ranks sharing a machine measure what each really gets;
 * memory is reduced with MAX at each interval's end).
 */
final class RankProgress {
    private final TrainConfig cfg;
    private final int attempt;
    private final Consumer<String> send; // null on ranks other than 0
    private final Communicator world;
    private final List<String> lines = new ArrayList<>();
    private final Tensor scalar = Tensor.allocateHost(DType.F32, 1);
    private IntervalStats interval;

    RankProgress(TrainConfig cfg, int attempt, Communicator world, Consumer<String> send) {
        this.cfg = cfg;
        this.attempt = attempt;
        this.world = world;
        this.send = send;
    }

    /** Measures this rank's peak (sgemm on its BLAS threads) and reports where training starts. Collective. */
    void start(long firstStep, String device) {
        org.sparkatron.train.JitWarmup.awaitStopped(2000); // it would take cores from the measurement (its current step ends in about a second)
        double peakGflops = ModelFlops.sgemmPeakGflops();
        double flopsPerStep = ModelFlops.perStep(cfg.model(), cfg.seqLen, cfg.globalBatch);
        interval = new IntervalStats(cfg.globalBatch, cfg.seqLen, flopsPerStep, cfg.world(), peakGflops * 1e9);
        scalar.floats().put(0, (float) peakGflops);
        world.allReduce(scalar, ReduceOp.MIN);
        emit(String.format(Locale.ROOT, "{\"kind\": \"start\", \"first_step\": %d, \"steps\": %d, \"attempt\": %d, \"parameters\": %d, "
                        + "\"flops_per_step\": %.6g, \"peak_gflops_per_rank\": %.3f, \"min_peak_gflops_per_rank\": %.3f, \"world\": %d, "
                        + "\"dp\": %d, \"tp\": %d, \"cp\": %d, \"sequence_parallel\": %b, \"device\": \"%s\", \"log_interval\": %d, \"eval_interval\": %d}",
                firstStep, cfg.steps, attempt, ModelFlops.parameters(cfg.model()), flopsPerStep, peakGflops, scalar.floats().get(0),
                cfg.world(), cfg.dp, cfg.tp, cfg.cp, cfg.sequenceParallel, device.replace("\\", "\\\\").replace("\"", "'"),
                cfg.logInterval, cfg.evalInterval));
    }

    /**
     * Step {@code s} (the loop's count) finished with {@code m}: its line (with {@code memory}, a JSON object of the
     * rank's measured memory, when not null), and the interval's at a boundary. Collective.
     */
    void step(long s, Trainer.StepMetrics m, String memory) {
        emit(m.toJson().replaceFirst("}$", String.format(Locale.ROOT, ", \"attempt\": %d%s}", attempt,
                memory == null ? "" : ", \"memory\": " + memory)));
        interval.add(m);
        if (s % cfg.logInterval == 0 || s == cfg.steps) {
            IntervalStats.Interval i = interval.finish();
            scalar.floats().put(0, (float) (i.rssBytes() / 1048576.0));
            world.allReduce(scalar, ReduceOp.MAX); // the fullest process of the job
            emit(i.toJson().replaceFirst("}$", String.format(Locale.ROOT, ", \"max_rss_mb\": %.1f, \"attempt\": %d}",
                    scalar.floats().get(0), attempt)));
        }
    }

    void eval(Evaluator.Evaluation e) {
        emit(e.toJson().replaceFirst("}$", String.format(Locale.ROOT, ", \"attempt\": %d}", attempt)));
    }

    /** Every line this rank reported (rank 0: start, steps, intervals, evaluations; others: none). */
    List<String> lines() {
        return lines;
    }

    private void emit(String line) {
        if (send != null) {
            lines.add(line);
            send.accept(line);
        }
    }
}
