package org.sparkatron.checkpoint;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import org.sparkatron.tensor.Tensor;

/**
 * Writes a safetensors file: the JSON header (metadata first, then tensors in the caller's order, padded
 * with spaces to a multiple of 8 bytes as the reference implementation does, so the data section is 8-byte
 * aligned), then each tensor's bytes in the same order.
 *
 * <p>The file is written to a temporary file beside the target, forced to disk, then renamed over the
 * target atomically: a reader sees either the old file or the complete new one, never a partial file, and
 * an open {@link SafeTensorsFile} on the old file keeps reading the old data.
 *
 * <p>Threading: stateless; concurrent calls writing different targets are safe. Blocking: file I/O and
 * fsync. Failure: on any exception the temporary file is deleted and the target is left untouched. The
 * tensors must be host tensors and must not be modified while being written.
 */
public final class SafeTensorsWriter {
    private SafeTensorsWriter() {
    }

    /**
     * Writes {@code tensors} (in iteration order) and {@code metadata} (may be null or empty: then no
     * {@code __metadata__} entry) to {@code path}, replacing any existing file atomically.
     *
     * @throws IllegalArgumentException for a tensor that is not on the host, or a reserved or null name
     * @throws IOException if the file cannot be written
     */
    public static void write(Path path, LinkedHashMap<String, Tensor> tensors, Map<String, String> metadata)
            throws IOException {
        SafeTensorsFile.requireLittleEndianPlatform();
        byte[] header = header(tensors, metadata);
        Path abs = path.toAbsolutePath();
        Path dir = abs.getParent();
        Path tmp = Files.createTempFile(dir, "." + abs.getFileName() + ".", ".tmp");
        boolean done = false;
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
                ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(0, header.length);
                writeFully(ch, len);
                writeFully(ch, ByteBuffer.wrap(header));
                for (Tensor t : tensors.values()) {
                    // Host buffers are native order, which requireLittleEndianPlatform made little-endian.
                    if (t.numel() > 0) {
                        writeFully(ch, t.hostBuffer());
                    }
                }
                ch.force(true);
            }
            Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            done = true;
        } finally {
            if (!done) {
                Files.deleteIfExists(tmp);
            }
        }
    }

    /** The padded header bytes (without the 8-byte length) for these tensors; package-private for tests. */
    static byte[] header(LinkedHashMap<String, Tensor> tensors, Map<String, String> metadata) {
        ObjectNode root = SafeTensorsHeader.JSON.createObjectNode();
        if (metadata != null && !metadata.isEmpty()) {
            ObjectNode m = root.putObject(SafeTensorsHeader.METADATA_KEY);
            for (Map.Entry<String, String> e : metadata.entrySet()) {
                if (e.getKey() == null || e.getValue() == null) {
                    throw new IllegalArgumentException("safetensors metadata keys and values must be non-null, got "
                            + e.getKey() + " = " + e.getValue());
                }
                m.put(e.getKey(), e.getValue());
            }
        }
        long offset = 0;
        for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
            String name = e.getKey();
            Tensor t = e.getValue();
            if (name == null || name.equals(SafeTensorsHeader.METADATA_KEY)) {
                throw new IllegalArgumentException("invalid tensor name '" + name + "' (null or reserved)");
            }
            if (t == null || !t.isHost()) {
                throw new IllegalArgumentException("tensor '" + name + "' must be a host tensor to be written, got " + t);
            }
            ObjectNode info = root.putObject(name);
            info.put("dtype", t.dtype().safetensorsName());
            ArrayNode shape = info.putArray("shape");
            Arrays.stream(t.shape()).forEach(shape::add);
            ArrayNode off = info.putArray("data_offsets");
            off.add(offset);
            offset += t.byteSize();
            off.add(offset);
        }
        byte[] json = root.toString().getBytes(StandardCharsets.UTF_8);
        int padded = (json.length + 7) / 8 * 8;
        byte[] out = Arrays.copyOf(json, padded);
        Arrays.fill(out, json.length, padded, (byte) ' ');
        return out;
    }

    private static void writeFully(FileChannel ch, ByteBuffer b) throws IOException {
        while (b.hasRemaining()) {
            ch.write(b);
        }
    }
}
