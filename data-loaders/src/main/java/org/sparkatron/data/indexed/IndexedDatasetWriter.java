package org.sparkatron.data.indexed;

import java.io.Closeable;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.Map;
import org.sparkatron.data.io.DataPaths;

/**
 * Writes a Megatron indexed dataset ({@code PREFIX.bin} + {@code PREFIX.idx}, see {@link IndexedDataset}
 * for the layout), as megatron/core/datasets/indexed_dataset.py's builder does: tokens are streamed to
 * the .bin as they come; lengths and document boundaries are kept in memory (12 bytes per sequence)
 * and the .idx is written on {@link #close}.
 *
 * <p>Threading: one thread. Failure: a token that does not fit the dtype is refused with its value;
 * I/O errors propagate. Nothing is written to the .idx until close, so a failed writer leaves no index
 * that a reader would accept.
 */
public final class IndexedDatasetWriter implements Closeable {
    private final String prefix;
    private final Map<String, String> hadoopConf;
    private final IndexedDType dtype;
    private final OutputStream bin;
    private final ByteBuffer buf = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
    private int[] lengths = new int[1024];
    private int sequences;
    private long[] docIndices = new long[1024];
    private int docEntries = 1; // docIndices[0] = 0
    private long tokens;
    private boolean closed;

    public IndexedDatasetWriter(String prefix, IndexedDType dtype) throws IOException {
        this(prefix, dtype, Map.of());
    }

    public IndexedDatasetWriter(String prefix, IndexedDType dtype, Map<String, String> hadoopConf) throws IOException {
        if (!dtype.integer) {
            throw new IllegalArgumentException("dtype " + dtype + " cannot hold token ids");
        }
        this.prefix = prefix;
        this.dtype = dtype;
        this.hadoopConf = hadoopConf;
        this.bin = DataPaths.create(prefix + ".bin", hadoopConf);
    }

    /** Appends one sequence; call {@link #endDocument} after the last sequence of a document. */
    public void addSequence(int[] ids, int off, int len) throws IOException {
        long max = dtype.maxToken();
        long min = dtype == IndexedDType.UINT8 || dtype == IndexedDType.UINT16 ? 0 : -max - 1;
        for (int i = 0; i < len; i++) {
            int t = ids[off + i];
            if (t < min || t > max) {
                throw new IllegalArgumentException(prefix + ".bin: token " + t + " does not fit dtype " + dtype);
            }
            if (buf.remaining() < dtype.size) {
                flushBuf();
            }
            switch (dtype) {
                case UINT16, INT16 -> buf.putShort((short) t);
                case INT32 -> buf.putInt(t);
                case UINT8, INT8 -> buf.put((byte) t);
                case INT64 -> buf.putLong(t);
                default -> throw new IllegalStateException();
            }
        }
        if (sequences == lengths.length) {
            lengths = Arrays.copyOf(lengths, lengths.length * 2);
        }
        lengths[sequences++] = len;
        tokens += len;
    }

    /** Marks the end of a document (Megatron's {@code end_document}). */
    public void endDocument() {
        if (docEntries == docIndices.length) {
            docIndices = Arrays.copyOf(docIndices, docIndices.length * 2);
        }
        docIndices[docEntries++] = sequences;
    }

    /** One document made of one sequence: the usual case for GPT pretraining data. */
    public void addDocument(int[] ids) throws IOException {
        addSequence(ids, 0, ids.length);
        endDocument();
    }

    public long tokens() {
        return tokens;
    }

    public int sequences() {
        return sequences;
    }

    public int documents() {
        return docEntries - 1;
    }

    private void flushBuf() throws IOException {
        bin.write(buf.array(), 0, buf.position());
        buf.clear();
    }

    @Override
    public void close() throws IOException {
        if (closed) {
            return;
        }
        closed = true;
        flushBuf();
        bin.close();
        try (OutputStream idx = DataPaths.create(prefix + ".idx", hadoopConf)) {
            ByteBuffer h = ByteBuffer.allocate(IndexedDataset.HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
            h.put(IndexedDataset.MAGIC).putLong(1L).put((byte) dtype.code).putLong(sequences).putLong(docEntries);
            idx.write(h.array());
            ByteBuffer b = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < sequences; i++) {
                b = put(idx, b, 4).putInt(lengths[i]);
            }
            long ptr = 0;
            for (int i = 0; i < sequences; i++) {
                b = put(idx, b, 8).putLong(ptr);
                ptr += (long) lengths[i] * dtype.size;
            }
            for (int i = 0; i < docEntries; i++) {
                b = put(idx, b, 8).putLong(docIndices[i]);
            }
            idx.write(b.array(), 0, b.position());
        }
    }

    private static ByteBuffer put(OutputStream out, ByteBuffer b, int need) throws IOException {
        if (b.remaining() < need) {
            out.write(b.array(), 0, b.position());
            b.clear();
        }
        return b;
    }
}
