package org.sparkatron.parallel.pipeline;

import java.util.ArrayList;
import java.util.List;

/**
 * 1F1B (PipeDream-flush, Megatron's {@code forward_backward_pipelining_without_interleaving}): stage s runs
 * {@code min(p - s - 1, m)} warm-up forwards, then alternates one forward and one backward, then the
 * remaining backwards. Stage s holds at most {@code min(p - s, m)} micro-batches' activations; the bubble
 * is {@code (p - 1) / (m + p - 1)} of the step. Any {@code m >= 1} works (m < p just leaves a larger bubble).
 */
public record OneFOneB(int stages, int microBatches) implements Schedule {
    public OneFOneB {
        if (stages < 1) {
            throw new IllegalArgumentException("pipeline size must be >= 1, got " + stages);
        }
        Schedule.checkMicroBatches(microBatches);
    }

    @Override
    public List<PipelineOp> ops(int stage) {
        if (stage < 0 || stage >= stages) {
            throw new IllegalArgumentException("stage " + stage + " of " + stages);
        }
        int warmup = Math.min(stages - stage - 1, microBatches);
        List<PipelineOp> out = new ArrayList<>();
        for (int f = 0; f < warmup; f++) {
            Schedule.step(out, true, f, 0, stage, stages, 1);
        }
        for (int i = 0; i < microBatches - warmup; i++) {
            Schedule.step(out, true, warmup + i, 0, stage, stages, 1);
            Schedule.step(out, false, i, 0, stage, stages, 1);
        }
        for (int b = microBatches - warmup; b < microBatches; b++) {
            Schedule.step(out, false, b, 0, stage, stages, 1);
        }
        return out;
    }

    @Override
    public int chunks() {
        return 1;
    }

    @Override
    public String name() {
        return "1F1B";
    }
}
