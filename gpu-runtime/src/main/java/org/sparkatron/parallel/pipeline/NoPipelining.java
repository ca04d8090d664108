package org.sparkatron.parallel.pipeline;

import java.util.ArrayList;
import java.util.List;

/**
 * One stage, one chunk: forward and backward of each micro-batch in turn, gradients accumulating
 * (Megatron's {@code forward_backward_no_pipelining}). Activations of one micro-batch at a time.
 */
public record NoPipelining(int microBatches) implements Schedule {
    public NoPipelining {
        Schedule.checkMicroBatches(microBatches);
    }

    @Override
    public List<PipelineOp> ops(int stage) {
        if (stage != 0) {
            throw new IllegalArgumentException("no pipelining has one stage, asked for stage " + stage);
        }
        List<PipelineOp> out = new ArrayList<>();
        for (int mb = 0; mb < microBatches; mb++) {
            Schedule.step(out, true, mb, 0, 0, 1, 1);
            Schedule.step(out, false, mb, 0, 0, 1, 1);
        }
        return out;
    }

    @Override
    public int stages() {
        return 1;
    }

    @Override
    public int chunks() {
        return 1;
    }

    @Override
    public String name() {
        return "no pipelining";
    }
}
