package org.sparkatron.comm;

import java.util.EnumMap;
import java.util.Map;

/**
 * One rank's communicators for every group of a {@link ParallelLayout}, carved out of one world
 * communicator with {@link Communicator#subGroup}, so no group opens a socket (the TCP world's
 * connections are shared; every frame carries its group id). Groups of size 1 are a
 * {@link SelfCommunicator} and cost nothing.
 *
 * <p>Group ids are {@code 1 + kind.ordinal() * world + index of the group within its kind}, the same on
 * every rank, so members agree without talking. Thread-safety: different groups may be used from
 * different threads at once (e.g. a DP gradient all-reduce overlapping PP sends); one group's collectives
 * come from one thread at a time. Closing releases the sub-groups, not the world communicator.
 */
public final class ProcessGroups implements AutoCloseable {
    private final ParallelLayout layout;
    private final int worldRank;
    private final Communicator world;
    private final Map<ParallelLayout.Group, Communicator> comms = new EnumMap<>(ParallelLayout.Group.class);

    private ProcessGroups(ParallelLayout layout, Communicator world) {
        this.layout = layout;
        this.worldRank = world.rank();
        this.world = world;
    }

    /** Builds this rank's groups; {@code world} must span exactly the layout's world. Sends nothing. */
    public static ProcessGroups create(ParallelLayout layout, Communicator world) {
        if (world.size() != layout.world()) {
            throw new IllegalArgumentException("world communicator has " + world.size() + " ranks, layout "
                    + layout + " needs " + layout.world());
        }
        ProcessGroups pg = new ProcessGroups(layout, world);
        for (ParallelLayout.Group kind : ParallelLayout.Group.values()) {
            int[] ranks = layout.group(kind, world.rank());
            if (ranks.length == 0) {
                continue;
            }
            Communicator c = ranks.length == 1 ? new SelfCommunicator()
                    : world.subGroup(1 + kind.ordinal() * layout.world() + layout.groupIndex(kind, world.rank()), ranks);
            pg.comms.put(kind, c);
        }
        return pg;
    }

    public ParallelLayout layout() {
        return layout;
    }

    /** The world communicator the groups were carved from (owned by the caller, not closed here). */
    public Communicator world() {
        return world;
    }

    public int worldRank() {
        return worldRank;
    }

    /** This rank's coordinates {tp, cp, ep, dp, pp}. */
    public int[] coords() {
        return layout.coords(worldRank);
    }

    /**
     * The communicator of this rank's group of a kind, or null if the rank is in no group of that kind
     * (only the embedding groups: ranks on middle pipeline stages).
     */
    public Communicator get(ParallelLayout.Group kind) {
        return comms.get(kind);
    }

    public Communicator tp() {
        return get(ParallelLayout.Group.TP);
    }

    public Communicator cp() {
        return get(ParallelLayout.Group.CP);
    }

    public Communicator ep() {
        return get(ParallelLayout.Group.EP);
    }

    public Communicator dp() {
        return get(ParallelLayout.Group.DP);
    }

    public Communicator dpWithCp() {
        return get(ParallelLayout.Group.DP_CP);
    }

    public Communicator pp() {
        return get(ParallelLayout.Group.PP);
    }

    public Communicator expertDp() {
        return get(ParallelLayout.Group.EXPERT_DP);
    }

    /** Null on ranks that are on neither the first nor the last pipeline stage. */
    /** This replica's ranks that read batches (first and last stage), or null on a stage between them. */
    public Communicator data() {
        return comms.get(ParallelLayout.Group.DATA);
    }

    public Communicator embedding() {
        return get(ParallelLayout.Group.EMBEDDING);
    }

    @Override
    public void close() {
        for (Communicator c : comms.values()) {
            c.close();
        }
    }
}
