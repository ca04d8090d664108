package org.sparkatron.device;

import java.util.ArrayDeque;
import java.util.EnumMap;
import java.util.IdentityHashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * A caching allocator for one device (PyTorch's CUDA caching allocator, simplified): requests round up
 * to a size class, released blocks go to a free list per size class, and a request is served by the
 * smallest cached block of at least its size class and at most twice it before the system is asked.
 * Blocks are never split or merged: a training step asks for the same shapes every time, so after the
 * first step every request is a cache hit. When the system refuses (or the capacity would be passed),
 * the cache is emptied back to the system and the request retried once.
 *
 * <p>Keeps the figures of {@link MemoryStats}. Not thread-safe: one rank's thread.
 *
 * @param <B> the backend's block handle (host storage, a device pointer)
 */
public final class CachingAllocator<B> {
    /** What a device provides: blocks from and back to the system. */
    public interface Backend<B> {
        /** A block of exactly {@code bytes}; may throw {@link OutOfMemoryError} or a device error. */
        B allocate(long bytes);

        void free(B block);
    }

    private static final long SMALL = 1L << 20;

    private final Backend<B> backend;
    private final String device;
    private final long capacity;
    private final TreeMap<Long, ArrayDeque<B>> cached = new TreeMap<>();
    private final Map<B, Long> sizeOf = new IdentityHashMap<>();
    private final Map<B, MemoryKind> live = new IdentityHashMap<>();
    private final Map<B, Long> requestedOf = new IdentityHashMap<>();
    private final Map<MemoryKind, Long> requestedByKind = new EnumMap<>(MemoryStats.zeros());
    private final Map<MemoryKind, Long> inUseByKind = new EnumMap<>(MemoryStats.zeros());
    private final Map<MemoryKind, Long> peakByKind = new EnumMap<>(MemoryStats.zeros());
    private long reserved;
    private long inUse;
    private long peak;
    private long systemAllocations;

    /** @param capacity the most this device may reserve from the system, in bytes */
    public CachingAllocator(String device, long capacity, Backend<B> backend) {
        this.device = device;
        this.capacity = capacity;
        this.backend = backend;
    }

    /** Size classes: 512-byte multiples under 1 MiB, 2 MiB multiples above (PyTorch's rounding). */
    public static long sizeClass(long bytes) {
        if (bytes < 0) {
            throw new IllegalArgumentException("negative allocation size " + bytes);
        }
        long unit = bytes < SMALL ? 512 : 2L << 20;
        return Math.max(unit, Math.addExact(bytes, unit - 1) / unit * unit);
    }

    /** A block of at least {@code bytes} for {@code kind}, from the cache when one fits. */
    public B allocate(long bytes, MemoryKind kind) {
        long want = sizeClass(bytes);
        Map.Entry<Long, ArrayDeque<B>> e = cached.ceilingEntry(want);
        B block;
        if (e != null && e.getKey() <= 2 * want) {
            block = e.getValue().pop();
            if (e.getValue().isEmpty()) {
                cached.remove(e.getKey());
            }
        } else {
            block = fromSystem(want);
        }
        long size = sizeOf.get(block);
        live.put(block, kind);
        requestedOf.put(block, bytes);
        requestedByKind.merge(kind, bytes, Long::sum);
        inUse += size;
        peak = Math.max(peak, inUse);
        long k = inUseByKind.merge(kind, size, Long::sum);
        peakByKind.merge(kind, k, Math::max);
        return block;
    }

    private B fromSystem(long size) {
        if (reserved + size > capacity) {
            emptyCache();
            if (reserved + size > capacity) {
                throw new DeviceMemoryException(device, "an allocation of " + size + " bytes (" + reserved + " already reserved)",
                        size, Math.max(0, capacity - reserved));
            }
        }
        B block;
        try {
            block = backend.allocate(size);
        } catch (OutOfMemoryError oom) {
            emptyCache();
            try {
                block = backend.allocate(size);
            } catch (OutOfMemoryError again) {
                throw new DeviceMemoryException(device, "an allocation (" + again.getMessage() + ")", size,
                        Math.max(0, capacity - reserved));
            }
        }
        sizeOf.put(block, size);
        reserved += size;
        systemAllocations++;
        return block;
    }

    /** Returns a block to the cache. Throws for a block this allocator did not hand out, or one released twice. */
    public void release(B block) {
        MemoryKind kind = live.remove(block);
        if (kind == null) {
            throw new IllegalArgumentException(device + ": release of a block that is not in use (released twice, or not from this device)");
        }
        long size = sizeOf.get(block);
        inUse -= size;
        inUseByKind.merge(kind, -size, Long::sum);
        requestedByKind.merge(kind, -requestedOf.remove(block), Long::sum);
        cached.computeIfAbsent(size, s -> new ArrayDeque<>()).push(block);
    }

    /** Whether {@code block} is a live block of this allocator. */
    public boolean isLive(B block) {
        return live.containsKey(block);
    }

    /** Frees every cached (not in use) block back to the system. */
    public void emptyCache() {
        for (ArrayDeque<B> q : cached.values()) {
            for (B b : q) {
                reserved -= sizeOf.remove(b);
                backend.free(b);
            }
        }
        cached.clear();
    }

    /** Frees everything, in use or cached (the device is closing). */
    public void freeAll() {
        emptyCache();
        for (B b : live.keySet()) {
            backend.free(b);
            sizeOf.remove(b);
        }
        live.clear();
        requestedOf.clear();
        reserved = 0;
        inUse = 0;
        inUseByKind.replaceAll((k, v) -> 0L);
        requestedByKind.replaceAll((k, v) -> 0L);
    }

    public MemoryStats stats() {
        return new MemoryStats(reserved, inUse, peak, inUseByKind, peakByKind, requestedByKind);
    }

    public void resetPeak() {
        peak = inUse;
        peakByKind.putAll(inUseByKind);
    }

    public long systemAllocations() {
        return systemAllocations;
    }

    public long capacity() {
        return capacity;
    }
}
