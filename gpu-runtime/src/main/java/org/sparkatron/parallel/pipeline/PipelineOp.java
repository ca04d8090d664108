package org.sparkatron.parallel.pipeline;

/**
 * One step of a pipeline schedule on one rank: receive, compute or send, for micro-batch {@code microBatch}
 * of model chunk {@code chunk}. Printed as Megatron's tables read: {@code F3} is the forward of micro-batch 3,
 * {@code B3} its backward, {@code rF3}/{@code sF3} receiving/sending its activations, {@code rB3}/{@code sB3}
 * its gradients; with several chunks the chunk follows a dot ({@code F3.1}).
 */
public record PipelineOp(Kind kind, int microBatch, int chunk) {
    /** What the step does. */
    public enum Kind {
        /** Receive this micro-batch's input activations from the previous stage. */
        RECV_FORWARD("rF"),
        FORWARD("F"),
        /** Send this micro-batch's output activations to the next stage. */
        SEND_FORWARD("sF"),
        /** Receive the gradient of this micro-batch's output from the next stage. */
        RECV_BACKWARD("rB"),
        BACKWARD("B"),
        /** Send the gradient of this micro-batch's input to the previous stage. */
        SEND_BACKWARD("sB");

        final String symbol;

        Kind(String symbol) {
            this.symbol = symbol;
        }
    }

    public boolean isCompute() {
        return kind == Kind.FORWARD || kind == Kind.BACKWARD;
    }

    String label(boolean showChunk) {
        return kind.symbol + microBatch + (showChunk ? "." + chunk : "");
    }

    @Override
    public String toString() {
        return label(true);
    }
}
