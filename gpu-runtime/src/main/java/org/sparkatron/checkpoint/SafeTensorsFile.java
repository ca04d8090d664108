package org.sparkatron.checkpoint;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import org.sparkatron.precision.HalfFloats;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.HostStorage;
import org.sparkatron.tensor.Tensor;

/**
 * A safetensors file opened for reading: the header is parsed and fully validated by {@link #open(Path)},
 * and tensor data is read through read-only memory maps, so {@link #tensor(String)} is zero-copy.
 *
 * <p>Layout (see the Hugging Face format description): an 8-byte little-endian header length {@code N},
 * {@code N} bytes of UTF-8 JSON ({@code {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {str: str}}}), then the data section; offsets are relative to the data section's start. Validation follows
 * the reference implementation: tensors must tile the data section exactly (no gap, no overlap, nothing left
 * over), so a truncated or padded file is refused.
 *
 * <p>Files up to 2 GiB are mapped as one buffer; larger files are mapped per tensor on demand, because one
 * Java buffer cannot exceed 2 GiB. A single tensor larger than 2 GiB cannot be viewed as one host tensor.
 *
 * <p>Threading: after {@code open} returns, all accessors may be called concurrently from several threads.
 * Blocking: {@code open} reads the header (file I/O); {@code tensor} may fault pages in from disk.
 * Lifetime: {@link #close()} closes the file channel; views returned earlier stay valid (the mapping lives
 * until those buffers are garbage collected), but no new view can be made. Views are read-only: copy a tensor
 * before modifying it (writing through its raw address would fault).
 */
public final class SafeTensorsFile implements AutoCloseable {
    /** The reference implementation's limit on the JSON header size (100 MB). */
    public static final long MAX_HEADER_BYTES = 100_000_000L;

    /** One validated header entry. Offsets are relative to the data section. */
    private record Entry(String name, DType dtype, int[] shape, long begin, long end) {
    }

    private final Path path;
    private final FileChannel channel;
    private final long dataStart;
    private final Map<String, Entry> entries;
    private final Map<String, String> metadata;
    /** The whole file, or null when it is larger than one buffer may be (then tensors are mapped one by one). */
    private final MappedByteBuffer whole;
    private volatile boolean closed;

    private SafeTensorsFile(Path path, FileChannel channel, long dataStart, Map<String, Entry> entries,
            Map<String, String> metadata, MappedByteBuffer whole) {
        this.path = path;
        this.channel = channel;
        this.dataStart = dataStart;
        this.entries = entries;
        this.metadata = metadata;
        this.whole = whole;
    }

    /**
     * Opens and validates a safetensors file.
     *
     * @throws SafeTensorsFormatException if the file breaks the format (the message names the file, the tensor
     *     and the numbers at fault)
     * @throws IOException if the file cannot be read
     */
    public static SafeTensorsFile open(Path path) throws IOException {
        return open(path, Integer.MAX_VALUE);
    }

    /** As {@link #open(Path)}, mapping the file as one buffer only if it is at most {@code maxWholeMapBytes}. */
    static SafeTensorsFile open(Path path, long maxWholeMapBytes) throws IOException {
        requireLittleEndianPlatform();
        FileChannel ch = FileChannel.open(path, StandardOpenOption.READ);
        try {
            long fileSize = ch.size();
            SafeTensorsHeader header = SafeTensorsHeader.read(path, ch, fileSize);
            Map<String, Entry> entries = new LinkedHashMap<>();
            for (SafeTensorsHeader.Info i : header.tensors()) {
                entries.put(i.name(), new Entry(i.name(), i.dtype(), i.shape(), i.begin(), i.end()));
            }
            MappedByteBuffer whole = null;
            if (fileSize <= maxWholeMapBytes) {
                whole = ch.map(FileChannel.MapMode.READ_ONLY, 0, fileSize);
            }
            return new SafeTensorsFile(path, ch, header.dataStart(), Collections.unmodifiableMap(entries),
                    Collections.unmodifiableMap(header.metadata()), whole);
        } catch (IOException | RuntimeException e) {
            ch.close();
            throw e;
        }
    }

    /** The file this was opened from. */
    public Path path() {
        return path;
    }

    /** Tensor names in the order the header lists them (for files this project writes, also data order). */
    public Set<String> names() {
        return entries.keySet();
    }

    public boolean contains(String name) {
        return entries.containsKey(name);
    }

    public DType dtype(String name) {
        return entry(name).dtype();
    }

    /** The tensor's shape (a fresh copy; empty for a 0-d scalar). */
    public int[] shape(String name) {
        return entry(name).shape().clone();
    }

    /** Number of elements of the named tensor. */
    public long numel(String name) {
        return SafeTensorsHeader.numel(entry(name).shape());
    }

    /** The {@code __metadata__} string map (empty if the file has none). */
    public Map<String, String> metadata() {
        return metadata;
    }

    /**
     * A zero-copy, read-only host tensor viewing the named tensor's bytes in the mapped file, in native
     * (little-endian) byte order.
     *
     * @throws IllegalArgumentException if there is no such tensor
     * @throws IllegalStateException if this file is closed, or the tensor exceeds 2 GiB
     */
    public Tensor tensor(String name) {
        Entry e = entry(name);
        return new Tensor(HostStorage.wrap(region(e)), 0, e.dtype(), e.shape());
    }

    /**
     * The named tensor's elements as floats: F32 as stored, BF16 and F16 widened exactly.
     *
     * @throws IllegalArgumentException if there is no such tensor or its dtype is not F32, BF16 or F16
     */
    public float[] readF32(String name) {
        Entry e = entry(name);
        long n = SafeTensorsHeader.numel(e.shape());
        if (n > Integer.MAX_VALUE - 8) {
            throw new IllegalStateException(path + ": tensor '" + name + "' has " + n
                    + " elements, too many for one float[]");
        }
        ByteBuffer b = region(e);
        float[] out = new float[(int) n];
        switch (e.dtype()) {
            case F32 -> b.asFloatBuffer().get(out);
            case BF16 -> {
                for (int i = 0; i < out.length; i++) {
                    out[i] = HalfFloats.bf16ToFloat(b.getShort(2 * i));
                }
            }
            case F16 -> {
                for (int i = 0; i < out.length; i++) {
                    out[i] = HalfFloats.f16ToFloat(b.getShort(2 * i));
                }
            }
            default -> throw new IllegalArgumentException(path + ": tensor '" + name + "' is " + e.dtype()
                    + ", readF32 converts only F32, BF16 and F16");
        }
        return out;
    }

    /** Closes the file channel. Views made earlier stay readable; new ones cannot be made. Idempotent. */
    @Override
    public void close() throws IOException {
        closed = true;
        channel.close();
    }

    /** The tensor's bytes as a little-endian direct buffer (position 0, capacity = byte size). */
    private ByteBuffer region(Entry e) {
        if (closed) {
            throw new IllegalStateException(path + " is closed");
        }
        long len = e.end() - e.begin();
        if (len > Integer.MAX_VALUE) {
            throw new IllegalStateException(path + ": tensor '" + e.name() + "' spans " + len
                    + " bytes, more than one host buffer can hold (2 GiB)");
        }
        ByteBuffer b;
        if (whole != null) {
            b = whole.slice(Math.toIntExact(dataStart + e.begin()), (int) len);
        } else {
            try {
                b = channel.map(FileChannel.MapMode.READ_ONLY, dataStart + e.begin(), len);
            } catch (IOException ex) {
                throw new IllegalStateException(path + ": cannot map tensor '" + e.name() + "' at byte "
                        + (dataStart + e.begin()) + ": " + ex.getMessage(), ex);
            }
        }
        // Mapped buffers start big-endian whatever the platform; the data is little-endian.
        return b.order(ByteOrder.LITTLE_ENDIAN);
    }

    private Entry entry(String name) {
        Entry e = entries.get(name);
        if (e == null) {
            throw new IllegalArgumentException(path + ": no tensor named '" + name + "' (file holds "
                    + entries.size() + " tensors)");
        }
        return e;
    }

    static void requireLittleEndianPlatform() {
        if (ByteOrder.nativeOrder() != ByteOrder.LITTLE_ENDIAN) {
            throw new UnsupportedOperationException("safetensors data is little-endian and host tensors are "
                    + "native-order; this platform is big-endian, which is not supported");
        }
    }

    @Override
    public String toString() {
        return "SafeTensorsFile(" + path + ", " + entries.size() + " tensors" + (closed ? ", closed" : "") + ")";
    }
}
