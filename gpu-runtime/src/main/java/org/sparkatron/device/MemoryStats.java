package org.sparkatron.device;

import java.util.EnumMap;
import java.util.Locale;
import java.util.Map;

/**
 * A device's memory figures at one moment. {@code reserved} is what the device holds from the system (in
 * use plus cached free blocks); {@code inUse} what live tensors occupy, in total and by kind;
 * {@code peakInUse} the largest {@code inUse} since the device was made or its peak was reset. These are
 * the rounded block sizes the allocator hands out; {@code requestedByKind} is what the live tensors asked
 * for (the figure a model's shape predicts exactly, see {@code MemoryEstimate}).
 */
public record MemoryStats(long reserved, long inUse, long peakInUse, Map<MemoryKind, Long> inUseByKind,
                          Map<MemoryKind, Long> peakByKind, Map<MemoryKind, Long> requestedByKind) {
    public MemoryStats {
        inUseByKind = Map.copyOf(inUseByKind);
        peakByKind = Map.copyOf(peakByKind);
        requestedByKind = Map.copyOf(requestedByKind);
    }

    /** Bytes the live tensors of one kind asked for (before size-class rounding). */
    public long requested(MemoryKind kind) {
        return requestedByKind.getOrDefault(kind, 0L);
    }

    /** Bytes in use for one kind. */
    public long inUse(MemoryKind kind) {
        return inUseByKind.getOrDefault(kind, 0L);
    }

    /** The largest in-use figure of one kind since the peak was reset. */
    public long peak(MemoryKind kind) {
        return peakByKind.getOrDefault(kind, 0L);
    }

    static Map<MemoryKind, Long> zeros() {
        Map<MemoryKind, Long> m = new EnumMap<>(MemoryKind.class);
        for (MemoryKind k : MemoryKind.values()) {
            m.put(k, 0L);
        }
        return m;
    }

    /** e.g. "in use 12.5 MiB (parameters 4.0, gradients 4.0, ...), peak 13.0 MiB, reserved 14.0 MiB". */
    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder(String.format(Locale.ROOT, "in use %s (", mib(inUse)));
        String sep = "";
        for (MemoryKind k : MemoryKind.values()) {
            sb.append(sep).append(k.name().toLowerCase(Locale.ROOT)).append(' ').append(mib(inUse(k)));
            sep = ", ";
        }
        return sb.append(String.format(Locale.ROOT, "), peak %s, reserved %s", mib(peakInUse), mib(reserved))).toString();
    }

    static String mib(long bytes) {
        return String.format(Locale.ROOT, "%.1f MiB", bytes / 1048576.0);
    }
}
