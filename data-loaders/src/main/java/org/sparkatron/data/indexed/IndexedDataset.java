package org.sparkatron.data.indexed;

import java.io.Closeable;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.IntBuffer;
import java.nio.LongBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import org.sparkatron.data.io.ByteSource;
import org.sparkatron.data.io.DataPaths;

/**
 * Reader of Megatron's indexed dataset: a {@code PREFIX.idx} index and {@code PREFIX.bin} token data,
 * byte-for-byte as megatron/core/datasets/indexed_dataset.py writes them.
 *
 * <pre>
 * .idx: magic "MMIDIDX\0\0" (9 bytes) | version u64 = 1 | dtype code u8 | sequence count u64 (n)
 *       | document-index count u64 (d = documents + 1) | lengths int32[n] | pointers int64[n] (byte
 *       offsets into .bin) | document indices int64[d] (0, ..., n) | [modes int8[n], multimodal only]
 * .bin: the tokens of every sequence, back to back, little-endian, in the header's dtype.
 * </pre>
 *
 * <p>Local files are memory-mapped (the index arrays are views of the mapping); files on other Hadoop
 * FileSystems are read with positioned reads: the index once, then one ranged read per sequence slice.
 * Opening validates the whole pair (header, sizes, pointers, document indices, .bin length) and refuses
 * a corrupt, truncated or mismatched pair with an {@link IOException} naming the file and the problem.
 *
 * <p>Threading: immutable after opening; {@link #read} is safe from several threads. Megatron's GPT
 * dataset treats each sequence as one document (it indexes sequence lengths by document id); so do we.
 */
public final class IndexedDataset implements Closeable {
    static final byte[] MAGIC = "MMIDIDX\0\0".getBytes(StandardCharsets.ISO_8859_1);
    static final int HEADER_BYTES = 9 + 8 + 1 + 8 + 8;

    private final String prefix;
    private final ByteSource bin;
    private final IndexedDType dtype;
    private final int sequenceCount;
    private final IntBuffer lengths;
    private final LongBuffer pointers;
    private final LongBuffer documentIndices;

    private IndexedDataset(String prefix, ByteSource bin, IndexedDType dtype, int n, IntBuffer lengths,
                           LongBuffer pointers, LongBuffer documentIndices) {
        this.prefix = prefix;
        this.bin = bin;
        this.dtype = dtype;
        this.sequenceCount = n;
        this.lengths = lengths;
        this.pointers = pointers;
        this.documentIndices = documentIndices;
    }

    /** Opens {@code prefix.idx} and {@code prefix.bin} on a local path. */
    public static IndexedDataset open(String prefix) throws IOException {
        return open(prefix, Map.of());
    }

    /**
     * Opens {@code prefix.idx} and {@code prefix.bin}; {@code hadoopConf} entries configure remote
     * FileSystems (ignored for local paths).
     */
    public static IndexedDataset open(String prefix, Map<String, String> hadoopConf) throws IOException {
        String idxName = prefix + ".idx";
        String binName = prefix + ".bin";
        ByteBuffer idx;
        try (ByteSource idxSrc = DataPaths.open(idxName, hadoopConf)) {
            if (idxSrc.size() > Integer.MAX_VALUE) {
                throw new IOException(idxName + ": index of " + idxSrc.size() + " bytes is larger than 2 GiB; not supported");
            }
            idx = idxSrc.slice(0, (int) idxSrc.size());
        }
        Header h = parseHeader(idxName, idx);
        ByteSource bin = DataPaths.open(binName, hadoopConf);
        try {
            return validate(prefix, idxName, binName, idx, h, bin);
        } catch (IOException | RuntimeException e) {
            bin.close();
            throw e;
        }
    }

    private record Header(IndexedDType dtype, int n, int d, boolean multimodal) {
    }

    private static Header parseHeader(String idxName, ByteBuffer idx) throws IOException {
        idx.order(ByteOrder.LITTLE_ENDIAN);
        if (idx.capacity() < HEADER_BYTES) {
            throw new IOException(idxName + ": truncated index: " + idx.capacity() + " bytes, the header alone needs "
                    + HEADER_BYTES);
        }
        for (int i = 0; i < MAGIC.length; i++) {
            if (idx.get(i) != MAGIC[i]) {
                throw new IOException(idxName + ": not a Megatron indexed dataset index: bad magic (expected \"MMIDIDX\\0\\0\")");
            }
        }
        long version = idx.getLong(9);
        if (version != 1) {
            throw new IOException(idxName + ": unsupported index version " + version + " (only version 1 exists)");
        }
        int code = idx.get(17) & 0xFF;
        IndexedDType dtype = IndexedDType.fromCode(code);
        if (dtype == null) {
            throw new IOException(idxName + ": unknown dtype code " + code);
        }
        if (!dtype.integer) {
            throw new IOException(idxName + ": dtype " + dtype + " cannot hold token ids");
        }
        long n = idx.getLong(18);
        long d = idx.getLong(26);
        if (n < 0 || n > Integer.MAX_VALUE - 8 || d < 1 || d > Integer.MAX_VALUE - 8) {
            throw new IOException(idxName + ": implausible counts in header: " + n + " sequences, " + d + " document indices");
        }
        long expected = HEADER_BYTES + 4 * n + 8 * n + 8 * d;
        long actual = idx.capacity();
        boolean multimodal = actual == expected + n && n > 0;
        if (actual != expected && !multimodal) {
            throw new IOException(idxName + ": " + (actual < expected ? "truncated" : "oversized") + " index: " + actual
                    + " bytes, but the header's " + n + " sequences and " + d + " document indices need " + expected);
        }
        return new Header(dtype, (int) n, (int) d, multimodal);
    }

    private static IndexedDataset validate(String prefix, String idxName, String binName, ByteBuffer idx, Header h,
                                           ByteSource bin) throws IOException {
        int n = h.n;
        int d = h.d;
        IntBuffer lengths = view(idx, HEADER_BYTES, 4L * n).asIntBuffer();
        LongBuffer pointers = view(idx, HEADER_BYTES + 4L * n, 8L * n).asLongBuffer();
        LongBuffer docs = view(idx, HEADER_BYTES + 12L * n, 8L * d).asLongBuffer();
        long expectedPtr = 0;
        for (int i = 0; i < n; i++) {
            int len = lengths.get(i);
            if (len < 0) {
                throw new IOException(idxName + ": sequence " + i + " has negative length " + len);
            }
            if (pointers.get(i) != expectedPtr) {
                throw new IOException(idxName + ": corrupt index: pointer of sequence " + i + " is " + pointers.get(i)
                        + ", but the lengths before it put it at byte " + expectedPtr);
            }
            expectedPtr += (long) len * h.dtype.size;
        }
        if (docs.get(0) != 0) {
            throw new IOException(idxName + ": corrupt index: document indices must start at 0, found " + docs.get(0));
        }
        for (int i = 1; i < d; i++) {
            if (docs.get(i) < docs.get(i - 1)) {
                throw new IOException(idxName + ": corrupt index: document indices decrease at " + i);
            }
        }
        if (docs.get(d - 1) != n) {
            throw new IOException(idxName + ": corrupt index: last document index is " + docs.get(d - 1)
                    + " but there are " + n + " sequences");
        }
        if (bin.size() != expectedPtr) {
            throw new IOException(binName + ": does not match " + idxName + ": " + bin.size() + " bytes, the index describes "
                    + expectedPtr + " bytes (" + (expectedPtr / h.dtype.size) + " tokens of " + h.dtype + ")"
                    + (bin.size() < expectedPtr ? "; the .bin is truncated" : ""));
        }
        return new IndexedDataset(prefix, bin, h.dtype, n, lengths, pointers, docs);
    }

    private static ByteBuffer view(ByteBuffer idx, long pos, long len) {
        ByteBuffer b = idx.duplicate();
        b.limit((int) (pos + len)).position((int) pos);
        return b.slice().order(ByteOrder.LITTLE_ENDIAN);
    }

    public String prefix() {
        return prefix;
    }

    public IndexedDType dtype() {
        return dtype;
    }

    /** Number of sequences (Megatron's {@code len(dataset)}). */
    public int sequenceCount() {
        return sequenceCount;
    }

    /** Number of documents (document-index entries minus one). */
    public int documentCount() {
        return documentIndices.capacity() - 1;
    }

    public int sequenceLength(int i) {
        return lengths.get(i);
    }

    public long sequencePointer(int i) {
        return pointers.get(i);
    }

    /** Entry {@code i} of the document index (sequence index where document {@code i} starts). */
    public long documentIndex(int i) {
        return documentIndices.get(i);
    }

    /** The sequence lengths as a read-only view (a view of the mapping for local files). */
    public IntBuffer sequenceLengths() {
        return lengths.asReadOnlyBuffer();
    }

    /** Total tokens in the .bin. */
    public long totalTokens() {
        return sequenceCount == 0 ? 0 : (pointers.get(sequenceCount - 1) / dtype.size) + lengths.get(sequenceCount - 1);
    }

    /** Tokens {@code [offset, offset + length)} of sequence {@code seq} (Megatron's {@code get}). */
    public int[] get(int seq, int offset, int length) throws IOException {
        int[] out = new int[length];
        read(seq, offset, length, out, 0);
        return out;
    }

    /** The whole sequence {@code seq}. */
    public int[] get(int seq) throws IOException {
        return get(seq, 0, sequenceLength(seq));
    }

    /**
     * Copies tokens {@code [offset, offset + length)} of sequence {@code seq} into {@code out[outOff...]}.
     * One positioned read (remote) or a view of the mapping (local).
     */
    public void read(int seq, int offset, int length, int[] out, int outOff) throws IOException {
        if (seq < 0 || seq >= sequenceCount) {
            throw new IndexOutOfBoundsException(prefix + ": sequence " + seq + " of " + sequenceCount);
        }
        int len = lengths.get(seq);
        if (offset < 0 || length < 0 || offset + (long) length > len) {
            throw new IndexOutOfBoundsException(prefix + ": tokens [" + offset + ", " + (offset + (long) length)
                    + ") of sequence " + seq + " with " + len + " tokens");
        }
        ByteBuffer b = bin.slice(pointers.get(seq) + (long) offset * dtype.size, length * dtype.size);
        decode(b, dtype, length, out, outOff);
    }

    static void decode(ByteBuffer b, IndexedDType dtype, int n, int[] out, int off) {
        switch (dtype) {
            case UINT16 -> {
                for (int i = 0; i < n; i++) out[off + i] = b.getShort(i * 2) & 0xFFFF;
            }
            case INT32 -> b.asIntBuffer().get(out, off, n);
            case INT16 -> {
                for (int i = 0; i < n; i++) out[off + i] = b.getShort(i * 2);
            }
            case UINT8 -> {
                for (int i = 0; i < n; i++) out[off + i] = b.get(i) & 0xFF;
            }
            case INT8 -> {
                for (int i = 0; i < n; i++) out[off + i] = b.get(i);
            }
            case INT64 -> {
                for (int i = 0; i < n; i++) out[off + i] = Math.toIntExact(b.getLong(i * 8));
            }
            default -> throw new IllegalStateException("dtype " + dtype + " cannot hold tokens");
        }
    }

    @Override
    public void close() throws IOException {
        bin.close();
    }
}
