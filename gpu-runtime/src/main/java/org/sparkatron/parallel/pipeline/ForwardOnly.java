package org.sparkatron.parallel.pipeline;

import java.util.ArrayList;
import java.util.List;

/**
 * Forward passes only (evaluation): each stage runs its chunks in order, every micro-batch through chunk 0,
 * then chunk 1, and so on. No chunk waits on a later chunk, so this is deadlock-free; a slot is released as
 * soon as its output is sent.
 */
public record ForwardOnly(int stages, int chunks, int microBatches) implements Schedule {
    public ForwardOnly {
        if (stages < 1 || chunks < 1) {
            throw new IllegalArgumentException("stages (" + stages + ") and chunks (" + chunks + ") must be >= 1");
        }
        Schedule.checkMicroBatches(microBatches);
    }

    @Override
    public List<PipelineOp> ops(int stage) {
        List<PipelineOp> out = new ArrayList<>();
        for (int c = 0; c < chunks; c++) {
            for (int mb = 0; mb < microBatches; mb++) {
                Schedule.step(out, true, mb, c, stage, stages, chunks);
            }
        }
        return out;
    }

    @Override
    public String name() {
        return "forward only";
    }
}
