package org.sparkatron.checkpoint;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
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
 * On a local disk shards are written in place and memory-mapped for reading; on any other storage they are
 * staged through a temporary local file (written, then streamed up; streamed down, then mapped), so the
 * safetensors code only ever sees local files. Stateless and thread-safe.
 */
final class ShardFiles {
    private static final int CHUNK = 8 << 20;

    private ShardFiles() {
    }

    /** A written file's size and checksum. */
    record Written(long bytes, long crc) {
    }

    /** Writes {@code tensors} as a safetensors file at {@code target}; returns its size and CRC32C. */
    static Written write(CheckpointStorage fs, String target, LinkedHashMap<String, Tensor> tensors, Map<String, String> meta)
            throws IOException {
        Path local = fs.localFile(target);
        if (local != null) {
            SafeTensors.write(local, tensors, meta);
            return new Written(Files.size(local), crc(local));
        }
        Path tmp = Files.createTempFile("sparkatron-shard-", ".safetensors");
        try {
            SafeTensors.write(tmp, tensors, meta);
            CRC32C crc = new CRC32C();
            long n = 0;
            byte[] buf = new byte[1 << 20];
            try (InputStream in = Files.newInputStream(tmp); OutputStream out = fs.create(target)) {
                for (int r; (r = in.read(buf)) > 0; ) {
                    crc.update(buf, 0, r);
                    out.write(buf, 0, r);
                    n += r;
                }
            }
            return new Written(n, crc.getValue());
        } finally {
            Files.deleteIfExists(tmp);
        }
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
     * A local, verified copy of a checkpoint file: the size and CRC32C must match {@code expected}.
     *
     * @throws CheckpointException naming the file when it is missing, truncated, longer, or corrupted
     */
    static Local fetchVerified(CheckpointStorage fs, String path, CheckpointMetadata.FileEntry expected) throws IOException {
        if (!fs.exists(path)) {
            throw new CheckpointException(path + ": missing (the metadata lists it)", true);
        }
        long len = fs.length(path);
        if (len != expected.bytes()) {
            throw new CheckpointException(path + ": " + (len < expected.bytes() ? "truncated" : "longer than written")
                    + ": " + len + " bytes, the metadata says " + expected.bytes(), true);
        }
        Path local = fs.localFile(path);
        boolean temp = local == null;
        long crc;
        if (temp) {
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
            crc = c.getValue();
        } else {
            crc = crc(local);
        }
        if (!hex(crc).equals(expected.crc32c())) {
            if (temp) {
                Files.deleteIfExists(local);
            }
            throw new CheckpointException(path + ": corrupted: CRC32C " + hex(crc) + ", the metadata says "
                    + expected.crc32c(), true);
        }
        return new Local(local, temp);
    }

    /** A local file to read, deleted on close when it is a staged copy. */
    record Local(Path path, boolean temporary) implements AutoCloseable {
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
