package org.sparkatron.parallel;

import java.util.Locale;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.SelfCommunicator;

/**
 * One rank's context-parallel (CP) context: its CP group (Megatron's {@code context_parallel_group}) and how
 * attention talks across it. Context parallelism splits every sequence of {@code T} tokens over the group's
 * {@code cp} ranks, load-balanced for the causal mask as Megatron's {@code get_batch_on_this_cp_rank} does:
 * the sequence is cut into {@code 2 cp} chunks of {@code T / (2 cp)} tokens and rank r holds chunks {@code r}
 * and {@code 2 cp - 1 - r}, in that order, so each rank has {@code T / cp} rows per sequence and an equal
 * share of the causal attention's work. Everything outside attention is per token and runs on those rows
 * unchanged; attention exchanges keys and values over the group ({@link CommType}). A group of one
 * ({@link #none()}) is no context parallelism.
 *
 * <p>Immutable. The group's point-to-point and collective operations are ordered with the rank's kernels
 * (see {@link Communicator}); one rank's thread.
 */
public final class ContextParallel {
    /** How attention exchanges keys and values across the CP group (Megatron's {@code cp_comm_type}). */
    public enum CommType {
        /**
         * Ring attention ({@code p2p}, Megatron's default): key/value blocks travel round the ring, each rank
         * attending its query chunks to the block it holds while it receives the next; the backward sends the
         * key/value gradients round the same way.
         */
        P2P("p2p"),
        /** Gather the whole key/value sequence, attend, reduce-scatter the key/value gradients. */
        ALL_GATHER("all_gather");

        private final String label;

        CommType(String label) {
            this.label = label;
        }

        public String label() {
            return label;
        }

        /** {@code p2p} (alias {@code ring}) or {@code all_gather}, case-insensitive; anything else is refused. */
        public static CommType parse(String s) {
            String v = s == null ? "" : s.trim().toLowerCase(Locale.ROOT);
            return switch (v) {
                case "p2p", "ring" -> P2P;
                case "all_gather", "allgather" -> ALL_GATHER;
                default -> throw new IllegalArgumentException("context parallel communication type '" + s
                        + "' is not supported: use p2p (ring attention) or all_gather");
            };
        }
    }

    private final Communicator group;
    private final CommType commType;

    public ContextParallel(Communicator group, CommType commType) {
        if (group == null || commType == null) {
            throw new IllegalArgumentException("a context-parallel context needs a group (a SelfCommunicator for CP = 1) and a "
                    + "communication type");
        }
        this.group = group;
        this.commType = commType;
    }

    /** CP = 1. */
    public static ContextParallel none() {
        return new ContextParallel(new SelfCommunicator(), CommType.P2P);
    }

    public Communicator group() {
        return group;
    }

    public CommType commType() {
        return commType;
    }

    public int size() {
        return group.size();
    }

    public int rank() {
        return group.rank();
    }

    /** Refuses a sequence length the group cannot split into {@code 2 cp} equal chunks, naming the numbers. */
    public void validate(int seqLength) {
        validate(seqLength, size());
    }

    /** {@link #validate(int)} for a group of {@code cp}; drivers call it before launching. */
    public static void validate(int seqLength, int cp) {
        if (cp < 1) {
            throw new IllegalArgumentException("context parallel size must be >= 1, got " + cp);
        }
        if (cp > 1 && seqLength % (2 * cp) != 0) {
            throw new IllegalArgumentException("sequence length " + seqLength + " is not divisible by 2 x context parallel size "
                    + cp + " = " + 2 * cp + " (each sequence is cut into 2 x cp chunks)");
        }
    }

    /** Rows of each sequence this rank holds: {@code T / cp}. */
    public int localLength(int seqLength) {
        validate(seqLength);
        return seqLength / size();
    }

    /** Tokens per chunk: {@code T / (2 cp)} (the whole sequence for CP = 1). */
    public int chunkLength(int seqLength) {
        validate(seqLength);
        return size() == 1 ? seqLength : seqLength / (2 * size());
    }

    /**
     * The global position (in [0, T)) of each of this rank's {@code T / cp} rows of a sequence: chunk r then chunk
     * {@code 2 cp - 1 - r}.
     */
    public int[] positions(int seqLength) {
        return positions(seqLength, size(), rank());
    }

    /** {@link #positions(int)} of rank {@code rank} of a group of {@code cp}. */
    public static int[] positions(int seqLength, int cp, int rank) {
        validate(seqLength, cp);
        if (rank < 0 || rank >= cp) {
            throw new IllegalArgumentException("context parallel rank " + rank + " outside [0, " + cp + ")");
        }
        int[] pos = new int[seqLength / cp];
        if (cp == 1) {
            for (int i = 0; i < pos.length; i++) {
                pos[i] = i;
            }
            return pos;
        }
        int chunk = seqLength / (2 * cp);
        for (int i = 0; i < chunk; i++) {
            pos[i] = rank * chunk + i;
            pos[chunk + i] = (2 * cp - 1 - rank) * chunk + i;
        }
        return pos;
    }

    /** Receives contiguous runs of rows: {@code count} local rows from {@code localRow} are global rows from {@code globalRow}. */
    public interface RowRun {
        void run(int localRow, long globalRow, int count);
    }

    /**
     * Maps local token rows {@code [firstLocalRow, firstLocalRow + rows)} of {@code [B, T / cp]} rows onto the
     * replica's global token rows of {@code [B, T]} (row {@code s * T + position}), in contiguous runs (at most two
     * per sequence and block boundary): for per-element keys that must name the same element on every layout,
     * such as dropout masks.
     */
    public void forEachRun(int firstLocalRow, int rows, int seqLength, RowRun f) {
        int tl = localLength(seqLength);
        int chunk = chunkLength(seqLength);
        int[] pos = positions(seqLength);
        int r = firstLocalRow;
        int end = firstLocalRow + rows;
        while (r < end) {
            int s = r / tl;
            int l = r % tl;
            int runEnd = Math.min(end - r, (l < chunk ? chunk : tl) - l); // to the end of the chunk
            f.run(r - firstLocalRow, (long) s * seqLength + pos[l], runEnd);
            r += runEnd;
        }
    }

    @Override
    public String toString() {
        return "CP rank " + rank() + "/" + size() + " (" + commType.label() + ")";
    }
}
