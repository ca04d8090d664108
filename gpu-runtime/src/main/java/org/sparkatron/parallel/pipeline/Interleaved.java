package org.sparkatron.parallel.pipeline;

import java.util.ArrayList;
import java.util.List;

/**
 * Interleaved 1F1B with {@code v} model chunks per stage (Megatron's
 * {@code forward_backward_pipelining_with_interleaving}, Narayanan et al. 2021). Forward step k of a stage
 * works on chunk {@code (k mod p v) / p} and micro-batch {@code (k / p v) p + k mod p} (Megatron's schedule
 * table with its default group of p micro-batches); backward steps visit the chunks in reverse. Warm-up is
 * {@code min(m v, 2 (p - s - 1) + (v - 1) p)} steps, then one forward and one backward alternate. The bubble
 * shrinks to {@code (p - 1) / (v m + p - 1)}. As in Megatron, the micro-batch count must be a multiple of
 * the pipeline size. {@code ScheduleTest} checks the orders against Megatron Core's own functions.
 */
public record Interleaved(int stages, int chunks, int microBatches) implements Schedule {
    public Interleaved {
        if (stages < 2 || chunks < 2) {
            throw new IllegalArgumentException("interleaving needs a pipeline size >= 2 and >= 2 chunks per stage, got "
                    + stages + " and " + chunks);
        }
        Schedule.checkMicroBatches(microBatches);
        if (microBatches % stages != 0) {
            throw new IllegalArgumentException("the interleaved schedule needs the number of micro-batches (" + microBatches
                    + ") to be a multiple of the pipeline size (" + stages + ")");
        }
    }

    private int chunkOf(int k, boolean forward) {
        int c = k % (stages * chunks) / stages;
        return forward ? c : chunks - 1 - c;
    }

    private int microBatchOf(int k) {
        return k / (stages * chunks) * stages + k % stages;
    }

    @Override
    public List<PipelineOp> ops(int stage) {
        if (stage < 0 || stage >= stages) {
            throw new IllegalArgumentException("stage " + stage + " of " + stages);
        }
        int total = microBatches * chunks;
        int warmup = Math.min(total, 2 * (stages - stage - 1) + (chunks - 1) * stages);
        List<PipelineOp> out = new ArrayList<>();
        for (int k = 0; k < warmup; k++) {
            Schedule.step(out, true, microBatchOf(k), chunkOf(k, true), stage, stages, chunks);
        }
        for (int i = 0; i < total - warmup; i++) {
            int f = warmup + i;
            Schedule.step(out, true, microBatchOf(f), chunkOf(f, true), stage, stages, chunks);
            Schedule.step(out, false, microBatchOf(i), chunkOf(i, false), stage, stages, chunks);
        }
        for (int b = total - warmup; b < total; b++) {
            Schedule.step(out, false, microBatchOf(b), chunkOf(b, false), stage, stages, chunks);
        }
        return out;
    }

    @Override
    public String name() {
        return "interleaved 1F1B";
    }
}
