package org.sparkatron.data.io;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;

/**
 * A local file memory-mapped read-only, in segments of at most 1 GiB (a mapping is indexed by int), so
 * files of any size work. Reads crossing a segment boundary are split. Thread-safe: every read works on
 * a duplicate of the segment buffer.
 */
public final class LocalByteSource implements ByteSource {
    private static final long SEGMENT = 1L << 30;

    private final String name;
    private final long size;
    private final MappedByteBuffer[] segments;

    public LocalByteSource(Path path) throws IOException {
        this.name = path.toString();
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            this.size = ch.size();
            int n = (int) ((size + SEGMENT - 1) / SEGMENT);
            segments = new MappedByteBuffer[n];
            for (int i = 0; i < n; i++) {
                long start = i * SEGMENT;
                segments[i] = ch.map(FileChannel.MapMode.READ_ONLY, start, Math.min(SEGMENT, size - start));
            }
        }
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public void read(long pos, ByteBuffer dst) throws IOException {
        int len = dst.remaining();
        checkRange(pos, len);
        while (dst.hasRemaining()) {
            int seg = (int) (pos / SEGMENT);
            int off = (int) (pos - seg * SEGMENT);
            ByteBuffer src = segments[seg].duplicate();
            int n = Math.min(dst.remaining(), src.capacity() - off);
            src.limit(off + n).position(off);
            dst.put(src);
            pos += n;
        }
    }

    @Override
    public ByteBuffer slice(long pos, int len) throws IOException {
        checkRange(pos, len);
        if (len == 0) {
            return ByteBuffer.allocate(0).order(ByteOrder.LITTLE_ENDIAN);
        }
        int seg = (int) (pos / SEGMENT);
        int off = (int) (pos - seg * SEGMENT);
        if (off + (long) len <= segments[seg].capacity()) {
            ByteBuffer b = segments[seg].duplicate();
            b.limit(off + len).position(off);
            return b.slice().order(ByteOrder.LITTLE_ENDIAN);
        }
        ByteBuffer copy = ByteBuffer.allocateDirect(len).order(ByteOrder.LITTLE_ENDIAN);
        read(pos, copy);
        copy.flip();
        return copy;
    }

    @Override
    public void close() {
        // Mappings are released by the GC; nothing to close (the channel is closed after mapping).
    }
}
