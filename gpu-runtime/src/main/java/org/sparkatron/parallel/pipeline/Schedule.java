package org.sparkatron.parallel.pipeline;

import java.util.ArrayList;
import java.util.List;

/**
 * A pipeline schedule: the ordered operations of every stage for {@link #microBatches()} micro-batches
 * through {@link #stages()} stages of {@link #chunks()} model chunks each. Schedules only say what happens in
 * which order; the model's executor runs them, receiving with blocking receives and sending without waiting
 * (the communicator buffers early messages), which is deadlock-free for every schedule here
 * ({@code ScheduleTest} simulates all stages to prove it for many shapes).
 *
 * <p>Topology: virtual stage {@code k = chunk * stages + stage}; activations flow from virtual stage k to
 * k + 1, so stage {@code stages - 1}'s chunk c feeds stage 0's chunk c + 1. Stateless and thread-safe.
 */
public interface Schedule {
    /** The operations of {@code stage}, in order. */
    List<PipelineOp> ops(int stage);

    int stages();

    int chunks();

    int microBatches();

    /** e.g. "1F1B", "interleaved 1F1B", "no pipelining". */
    String name();

    /** The largest number of micro-batches whose activations chunk {@code chunk} of {@code stage} holds at once. */
    default int maxInFlight(int stage, int chunk) {
        int max = 0;
        int live = 0;
        for (PipelineOp op : ops(stage)) {
            if (op.chunk() == chunk && op.kind() == PipelineOp.Kind.FORWARD) {
                max = Math.max(max, ++live);
            } else if (op.chunk() == chunk && op.kind() == PipelineOp.Kind.BACKWARD) {
                live--;
            }
        }
        return max;
    }

    /**
     * The compute operations of every stage as a table, one row per stage, in issue order (communication
     * left out), e.g. for 1F1B with 4 stages and 8 micro-batches the first row is
     * {@code F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7}.
     */
    default String describe() {
        StringBuilder sb = new StringBuilder(String.format(java.util.Locale.ROOT, "%s: %d stage(s)%s, %d micro-batch(es)%n", name(),
                stages(), chunks() > 1 ? " x " + chunks() + " chunks" : "", microBatches()));
        for (int s = 0; s < stages(); s++) {
            List<String> cells = new ArrayList<>();
            for (PipelineOp op : ops(s)) {
                if (op.isCompute()) {
                    cells.add(op.label(chunks() > 1));
                }
            }
            sb.append(String.format(java.util.Locale.ROOT, "stage %d: %s%n", s, String.join(" ", cells)));
        }
        return sb.toString();
    }

    /** The schedule Megatron would use: no pipelining (p = 1), 1F1B (v = 1) or interleaved 1F1B. */
    static Schedule of(int stages, int chunks, int microBatches) {
        if (stages == 1 && chunks == 1) {
            return new NoPipelining(microBatches);
        }
        return chunks == 1 ? new OneFOneB(stages, microBatches) : new Interleaved(stages, chunks, microBatches);
    }

    /** Adds the receive, compute and send steps of one forward (or backward) of {@code mb} on {@code chunk}. */
    static void step(List<PipelineOp> out, boolean forward, int mb, int chunk, int stage, int stages, int chunks) {
        int k = chunk * stages + stage;
        boolean first = k == 0;
        boolean last = k == stages * chunks - 1;
        if (forward) {
            if (!first) {
                out.add(new PipelineOp(PipelineOp.Kind.RECV_FORWARD, mb, chunk));
            }
            out.add(new PipelineOp(PipelineOp.Kind.FORWARD, mb, chunk));
            if (!last) {
                out.add(new PipelineOp(PipelineOp.Kind.SEND_FORWARD, mb, chunk));
            }
        } else {
            if (!last) {
                out.add(new PipelineOp(PipelineOp.Kind.RECV_BACKWARD, mb, chunk));
            }
            out.add(new PipelineOp(PipelineOp.Kind.BACKWARD, mb, chunk));
            if (!first) {
                out.add(new PipelineOp(PipelineOp.Kind.SEND_BACKWARD, mb, chunk));
            }
        }
    }

    static void checkMicroBatches(int m) {
        if (m < 1) {
            throw new IllegalArgumentException("a schedule needs at least one micro-batch, got " + m);
        }
    }
}
