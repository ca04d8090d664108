package org.sparkatron.comm.shm;

import java.io.IOException;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import org.sparkatron.tensor.Unmapper;

/**
 * One memory-mapped file shared by the n ranks of a group on one host. Layout (all offsets aligned):
 * <pre>
 *   n flag lines of 128 bytes   rank q's progress counter (a long), written only by q, with release/acquire
 *   2 x n meta areas            rank q's description of its collectives, alternating: 4 words op, dtype and
 *                               sizes, 4 words of addresses, 2 x n words of counts
 *   3 x n slots                 rank q's staging buffers, used in turn by successive rounds, slotBytes each
 * </pre>
 * Each rank writes only its own line, meta area and slots; everyone reads everyone's. The flag lines are 128
 * bytes apart so that no two ranks' counters share a cache line (or an adjacent-line prefetch pair).
 *
 * <p>Creation: one rank {@link #create}s the file (new, owner-only permissions, filled with zeros through
 * the file channel so that a full {@code /dev/shm} is an {@link IOException} here, never a SIGBUS later);
 * the others {@link #open} it after being told it exists. Not thread-safe: one group's collectives come
 * from one thread at a time.
 */
final class ShmSegment implements AutoCloseable {
    private static final VarHandle LONGS = MethodHandles.byteBufferViewVarHandle(long[].class, ByteOrder.nativeOrder());
    static final int LINE = 128;
    /** Staging buffers per rank: a round's buffer is rewritten three rounds later (see ShmGroup#buffer). */
    static final int BUFFERS = 3;

    final int n;
    final int slotBytes;
    final int metaLongs;
    private final MappedByteBuffer map;
    private final int metaOff;
    private final int metaStride;
    private final ByteBuffer[][] slots;
    private boolean closed;

    private ShmSegment(MappedByteBuffer map, int n, int slotBytes) {
        this.map = map;
        this.n = n;
        this.slotBytes = slotBytes;
        this.metaLongs = 8 + 2 * n;
        this.metaStride = align(metaLongs * 8, LINE);
        this.metaOff = n * LINE;
        int slotsOff = slotsOffset(n);
        this.slots = new ByteBuffer[BUFFERS][n];
        for (int p = 0; p < BUFFERS; p++) {
            for (int q = 0; q < n; q++) {
                slots[p][q] = map.slice(slotsOff + (p * n + q) * slotBytes, slotBytes).order(ByteOrder.nativeOrder());
            }
        }
    }

    private static int align(int x, int a) {
        return (x + a - 1) / a * a;
    }

    private static int slotsOffset(int n) {
        return align(n * LINE + 2 * n * align((8 + 2 * n) * 8, LINE), 4096);
    }

    /** Bytes of the file for n ranks and this slot size; throws if it does not fit one mapping. */
    static long bytes(int n, int slotBytes) {
        long total = slotsOffset(n) + (long) BUFFERS * n * slotBytes;
        if (total > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("shared-memory segment for " + n + " ranks with " + slotBytes
                    + "-byte slots would exceed 2 GiB");
        }
        return total;
    }

    /** Creates the file (it must not exist), fills it with zeros and maps it. */
    static ShmSegment create(Path file, int n, int slotBytes) throws IOException {
        long total = bytes(n, slotBytes);
        Files.createFile(file, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            ByteBuffer zeros = ByteBuffer.allocateDirect(1 << 20);
            for (long at = 0; at < total; ) {
                zeros.clear().limit((int) Math.min(zeros.capacity(), total - at));
                at += ch.write(zeros, at);
            }
            return new ShmSegment(ch.map(FileChannel.MapMode.READ_WRITE, 0, total), n, slotBytes);
        } catch (IOException | RuntimeException e) {
            Files.deleteIfExists(file);
            throw e;
        }
    }

    /** Maps an existing file created by {@link #create} with the same n and slot size. */
    static ShmSegment open(Path file, int n, int slotBytes) throws IOException {
        long total = bytes(n, slotBytes);
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            if (ch.size() != total) {
                throw new IOException(file + " has " + ch.size() + " bytes, expected " + total);
            }
            return new ShmSegment(ch.map(FileChannel.MapMode.READ_WRITE, 0, total), n, slotBytes);
        }
    }

    long flag(int q) {
        return (long) LONGS.getAcquire(map, q * LINE);
    }

    /** Publishes rank q's counter; every write q made before is visible to a reader that sees the value. */
    void setFlag(int q, long v) {
        LONGS.setRelease(map, q * LINE, v);
    }

    /** A plain word of the first flag line after the counter (test hooks, probes). */
    long word(int q, int i) {
        return map.getLong(q * LINE + 8 + 8 * i);
    }

    void setWord(int q, int i, long v) {
        map.putLong(q * LINE + 8 + 8 * i, v);
    }

    /** Word i of rank q's description of parity p (collectives alternate between two). */
    long meta(int p, int q, int i) {
        return map.getLong(metaOff + (2 * q + p) * metaStride + 8 * i);
    }

    void setMeta(int p, int q, int i, long v) {
        map.putLong(metaOff + (2 * q + p) * metaStride + 8 * i, v);
    }

    /** Rank q's staging buffer p (0..BUFFERS-1; a shared view: use absolute offsets only). */
    ByteBuffer slot(int p, int q) {
        return slots[p][q];
    }

    /** Unmaps now (the memory goes once every rank unmapped and the file is unlinked). Idempotent. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        Unmapper.unmap(map); // now, not when the garbage collector finds it
    }
}
