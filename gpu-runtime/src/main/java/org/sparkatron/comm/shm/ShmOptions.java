package org.sparkatron.comm.shm;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Settings of the shared-memory transport that {@link org.sparkatron.comm.Communicators#connect} layers on
 * the TCP mesh for ranks of one host. Immutable; the {@code with*} methods return modified copies.
 *
 * <ul>
 *   <li>{@code enabled}: use shared memory for collectives among ranks that share a host (verified, see
 *       {@link HostMap}); false = TCP only. The default is on unless the system property
 *       {@code sparkatron.comm.shm} or the environment variable {@code SPARKATRON_COMM_SHM} is "false".</li>
 *   <li>{@code dir}: a RAM-backed directory for the segments ({@code /dev/shm}); null = none usable, which
 *       disables the transport (a disk-backed file would turn collectives into disk writes).</li>
 *   <li>{@code slotBytes}: bytes each rank stages per round (each rank has three staging buffers, used by
 *       successive rounds in turn: a group of n ranks maps 3 x n x slotBytes). Large enough that a 64 MiB all-reduce takes few rounds, small enough that a
 *       round's working set stays in the last-level cache.</li>
 *   <li>{@code smallBytes}: at or below this many bytes an all-reduce is one round in which every rank
 *       reduces the whole buffer (latency-optimal) instead of each reducing its share (bandwidth-optimal).</li>
 *   <li>{@code direct}: ranks that are threads of one JVM read and write each other's tensors instead of
 *       staging through the segment (above smallBytes); false stages always (tests of the process path).</li>
 * </ul>
 */
public final class ShmOptions {
    public final boolean enabled;
    public final Path dir;
    public final int slotBytes;
    public final int smallBytes;
    public final boolean direct;

    private ShmOptions(boolean enabled, Path dir, int slotBytes, int smallBytes, boolean direct) {
        if (slotBytes < 4096 || slotBytes % 64 != 0) {
            throw new IllegalArgumentException("shared-memory slot must be >= 4096 bytes and a multiple of 64, got "
                    + slotBytes);
        }
        if (smallBytes < 0 || smallBytes > slotBytes) {
            throw new IllegalArgumentException("shared-memory smallBytes must be in [0, slotBytes=" + slotBytes + "], got "
                    + smallBytes);
        }
        this.enabled = enabled;
        this.dir = dir;
        this.slotBytes = slotBytes;
        this.smallBytes = smallBytes;
        this.direct = direct;
    }

    /** On (unless switched off by property or environment), in {@code /dev/shm}, 1 MiB slots, 16 KiB small. */
    public static ShmOptions defaults() {
        String p = System.getProperty("sparkatron.comm.shm", System.getenv("SPARKATRON_COMM_SHM"));
        boolean on = p == null || !p.trim().equalsIgnoreCase("false");
        Path shm = Path.of("/dev/shm");
        Path dir = Files.isDirectory(shm) && Files.isWritable(shm) ? shm : null;
        return new ShmOptions(on, dir, 1 << 20, 16 << 10, true);
    }

    /** TCP only. */
    public static ShmOptions disabled() {
        return defaults().withEnabled(false);
    }

    public ShmOptions withEnabled(boolean on) {
        return new ShmOptions(on, dir, slotBytes, smallBytes, direct);
    }

    public ShmOptions withDir(Path d) {
        return new ShmOptions(enabled, d, slotBytes, smallBytes, direct);
    }

    public ShmOptions withSizes(int slot, int small) {
        return new ShmOptions(enabled, dir, slot, small, direct);
    }

    public ShmOptions withDirect(boolean d) {
        return new ShmOptions(enabled, dir, slotBytes, smallBytes, d);
    }

    /** Whether the transport can be used at all here (on, with a directory). */
    public boolean usable() {
        return enabled && dir != null;
    }

    @Override
    public String toString() {
        return usable() ? "shared memory in " + dir + " (slot " + (slotBytes >> 10) + " KiB)" : "shared memory off";
    }
}
