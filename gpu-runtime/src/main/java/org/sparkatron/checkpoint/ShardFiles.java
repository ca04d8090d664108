package org.sparkatron.checkpoint;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.zip.CRC32C;
import org.sparkatron.tensor.Tensor;

/**
 * Moves shard files between memory and a {@link CheckpointStorage}, with a CRC32C of every file's bytes.
 * On a local disk shards are written in place (with direct I/O where the file system allows it:
 * {@link DirectFileWriter}) and memory-mapped for reading; on any other storage they are
 * staged through a temporary local file (written, then streamed up; streamed down, then mapped), so the
 * safetensors code only ever sees local files. Stateless and thread-safe.
 */
final class ShardFiles {
    private static final int CHUNK = 8 << 20;
    /** Written and checksummed together: small enough that the write reads what the checksum just cached. */
    private static final int WRITE_CHUNK = 1 << 20;

    private ShardFiles() {
    }

    /** A written file's size and checksum. */
    record Written(long bytes, long crc) {
    }

    /**
     * Writes {@code tensors} as a safetensors file at {@code target} and returns its size and CRC32C, computed
     * on the bytes as they are written (no second pass). On a local disk with direct I/O (else through a file
     * channel and the page cache), forced to disk before returning; elsewhere streamed to {@link CheckpointStorage#create} (whose close makes the file
     * durable). The tensors must not change while being written.
     */
    static Written write(CheckpointStorage fs, String target, LinkedHashMap<String, Tensor> tensors, Map<String, String> meta)
            throws IOException {
        SafeTensorsFile.requireLittleEndianPlatform();
        byte[] header = SafeTensorsWriter.header(tensors, meta);
        ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(0, header.length);
        CRC32C crc = new CRC32C();
        long n = 0;
        Path local = fs.localFile(target);
        if (local != null) {
            java.util.List<ByteBuffer> parts = new java.util.ArrayList<>();
            parts.add(len);
            parts.add(ByteBuffer.wrap(header));
            for (Tensor t : tensors.values()) {
                if (t.numel() > 0) {
                    parts.add(t.hostBuffer()); // native order, which requireLittleEndianPlatform made little-endian
                }
            }
            Written direct = DirectFileWriter.write(local, parts);
            if (direct != null) {
                return direct;
            }
            try (FileChannel ch = FileChannel.open(local, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                    StandardOpenOption.TRUNCATE_EXISTING)) {
                n += put(ch, crc, len);
                n += put(ch, crc, ByteBuffer.wrap(header));
                for (Tensor t : tensors.values()) {
                    if (t.numel() > 0) {
                        // Host buffers are native order, which requireLittleEndianPlatform made little-endian.
                        n += put(ch, crc, t.hostBuffer());
                    }
                }
                ch.force(true);
            }
            return new Written(n, crc.getValue());
        }
        byte[] chunk = new byte[1 << 20];
        try (OutputStream out = fs.create(target)) {
            n += put(out, crc, len, chunk);
            n += put(out, crc, ByteBuffer.wrap(header), chunk);
            for (Tensor t : tensors.values()) {
                if (t.numel() > 0) {
                    n += put(out, crc, t.hostBuffer(), chunk);
                }
            }
        }
        return new Written(n, crc.getValue());
    }

    /** Writes all of {@code b} in chunks, adding each chunk to the checksum as it goes (while it is cached). */
    private static long put(FileChannel ch, CRC32C crc, ByteBuffer b) throws IOException {
        long n = b.remaining();
        while (b.hasRemaining()) {
            ByteBuffer part = b.slice(b.position(), Math.min(WRITE_CHUNK, b.remaining()));
            crc.update(part.duplicate());
            while (part.hasRemaining()) {
                ch.write(part);
            }
            b.position(b.position() + part.capacity());
        }
        return n;
    }

    private static long put(OutputStream out, CRC32C crc, ByteBuffer b, byte[] chunk) throws IOException {
        long n = b.remaining();
        while (b.hasRemaining()) {
            int k = Math.min(chunk.length, b.remaining());
            b.get(chunk, 0, k);
            crc.update(chunk, 0, k);
            out.write(chunk, 0, k);
        }
        return n;
    }

    /** Writes a small file whole. */
    static void writeSmall(CheckpointStorage fs, String target, byte[] data) throws IOException {
        try (OutputStream out = fs.create(target)) {
            out.write(data);
        }
    }

    /** Reads a small file whole. */
    static byte[] readSmall(CheckpointStorage fs, String path) throws IOException {
        try (InputStream in = fs.open(path)) {
            return in.readAllBytes();
        }
    }

    /**
     * A local copy of a checkpoint file to read: on a local disk the file itself (its size checked; its CRC32C is
     * checked as it is read, {@link CheckedFileReader}); on other storage a temporary copy streamed down, whose
     * size and CRC32C are checked before it is returned (so a damaged remote file is refused before any of it is
     * used, naming the remote path).
     *
     * @throws CheckpointException naming the file when it is missing, truncated, longer, or corrupted
     */
    static Local fetch(CheckpointStorage fs, String path, CheckpointMetadata.FileEntry expected) throws IOException {
        if (!fs.exists(path)) {
            throw new CheckpointException(path + ": missing (the metadata lists it)", true);
        }
        long len = fs.length(path);
        if (len != expected.bytes()) {
            throw CheckedFileReader.sizeError(path, len, expected.bytes());
        }
        Path local = fs.localFile(path);
        if (local != null) {
            return new Local(local, false, path);
        }
        local = Files.createTempFile("sparkatron-shard-", ".safetensors");
        CRC32C c = new CRC32C();
        byte[] buf = new byte[1 << 20];
        try (InputStream in = fs.open(path); OutputStream out = Files.newOutputStream(local)) {
            for (int r; (r = in.read(buf)) > 0; ) {
                c.update(buf, 0, r);
                out.write(buf, 0, r);
            }
        } catch (IOException e) {
            Files.deleteIfExists(local);
            throw e;
        }
        if (!hex(c.getValue()).equals(expected.crc32c())) {
            Files.deleteIfExists(local);
            throw new CheckpointException(path + ": corrupted: CRC32C " + hex(c.getValue()) + ", the metadata says "
                    + expected.crc32c(), true);
        }
        return new Local(local, true, path);
    }

    /** A local file to read, named {@code name} in errors, deleted on close when it is a staged copy. */
    record Local(Path path, boolean temporary, String name) implements AutoCloseable {
        @Override
        public void close() throws IOException {
            if (temporary) {
                Files.deleteIfExists(path);
            }
        }
    }

    static long crc(Path file) throws IOException {
        CRC32C c = new CRC32C();
        ByteBuffer buf = ByteBuffer.allocateDirect(CHUNK);
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            while (ch.read(buf) >= 0) {
                buf.flip();
                c.update(buf);
                buf.clear();
            }
        }
        return c.getValue();
    }

    static String hex(long crc) {
        return String.format(Locale.ROOT, "%08x", crc);
    }
}
