package org.sparkatron.checkpoint;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.CharBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.tensor.DType;

/**
 * Reads and validates a safetensors header. Every check the reader relies on happens here, once, so that
 * {@link SafeTensorsFile} can trust offsets afterwards. Package-private: a detail of the reader.
 */
final class SafeTensorsHeader {
    static final String METADATA_KEY = "__metadata__";

    /** Immutable and thread-safe once configured; shared by all readers (holds no per-rank state). */
    static final ObjectMapper JSON = new ObjectMapper()
            .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    record Info(String name, DType dtype, int[] shape, long begin, long end) {
    }

    private final List<Info> tensors;
    private final Map<String, String> metadata;
    private final long dataStart;

    private SafeTensorsHeader(List<Info> tensors, Map<String, String> metadata, long dataStart) {
        this.tensors = tensors;
        this.metadata = metadata;
        this.dataStart = dataStart;
    }

    /** Entries in header order. */
    List<Info> tensors() {
        return tensors;
    }

    Map<String, String> metadata() {
        return metadata;
    }

    /** Absolute file offset of the data section: 8 + header length. */
    long dataStart() {
        return dataStart;
    }

    static SafeTensorsHeader read(Path path, FileChannel ch, long fileSize) throws IOException {
        if (fileSize < 8) {
            throw fail(path, "file is " + fileSize + " bytes, shorter than the 8-byte header length");
        }
        ByteBuffer lenBuf = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
        readFully(ch, lenBuf, 0);
        long n = lenBuf.getLong(0);
        if (n < 0 || n > SafeTensorsFile.MAX_HEADER_BYTES) {
            throw fail(path, "header length " + Long.toUnsignedString(n) + " exceeds the limit of "
                    + SafeTensorsFile.MAX_HEADER_BYTES + " bytes (corrupt or not a safetensors file)");
        }
        if (n > fileSize - 8) {
            throw fail(path, "header length " + n + " is beyond the end of the file (" + fileSize
                    + " bytes, so at most " + (fileSize - 8) + " header bytes)");
        }
        ByteBuffer hb = ByteBuffer.allocate((int) n);
        readFully(ch, hb, 8);
        hb.flip();
        String text;
        try {
            CharBuffer cb = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(hb);
            text = cb.toString();
        } catch (CharacterCodingException e) {
            throw fail(path, "header is not valid UTF-8", e);
        }
        JsonNode root;
        try {
            root = JSON.readTree(text);
        } catch (JsonProcessingException e) {
            throw fail(path, "header is not well-formed JSON: " + e.getOriginalMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw fail(path, "header must be a JSON object, found "
                    + (root == null || root.isMissingNode() ? "nothing" : root.getNodeType().toString().toLowerCase()));
        }
        long dataLen = fileSize - 8 - n;
        Map<String, String> metadata = new LinkedHashMap<>();
        List<Info> infos = new ArrayList<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = root.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> f = it.next();
            if (f.getKey().equals(METADATA_KEY)) {
                readMetadata(path, f.getValue(), metadata);
            } else {
                infos.add(readInfo(path, f.getKey(), f.getValue(), dataLen));
            }
        }
        checkTiling(path, infos, dataLen, fileSize, n);
        return new SafeTensorsHeader(List.copyOf(infos), metadata, 8 + n);
    }

    private static void readMetadata(Path path, JsonNode node, Map<String, String> out) throws SafeTensorsFormatException {
        if (!node.isObject()) {
            throw fail(path, METADATA_KEY + " must be an object of strings, found " + node.getNodeType().toString().toLowerCase());
        }
        for (Iterator<Map.Entry<String, JsonNode>> it = node.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> m = it.next();
            if (!m.getValue().isTextual()) {
                throw fail(path, METADATA_KEY + " value for key '" + m.getKey() + "' must be a string, found "
                        + m.getValue());
            }
            out.put(m.getKey(), m.getValue().textValue());
        }
    }

    private static Info readInfo(Path path, String name, JsonNode node, long dataLen) throws SafeTensorsFormatException {
        String where = "tensor '" + name + "'";
        if (!node.isObject()) {
            throw fail(path, where + ": entry must be an object with dtype, shape and data_offsets, found " + node);
        }
        JsonNode dt = node.get("dtype");
        if (dt == null || !dt.isTextual()) {
            throw fail(path, where + ": missing or non-string \"dtype\"");
        }
        DType dtype;
        try {
            dtype = DType.fromSafetensors(dt.textValue());
        } catch (IllegalArgumentException e) {
            throw fail(path, where + ": " + e.getMessage(), e);
        }
        JsonNode sh = node.get("shape");
        if (sh == null || !sh.isArray()) {
            throw fail(path, where + ": missing or non-array \"shape\"");
        }
        int[] shape = new int[sh.size()];
        for (int i = 0; i < shape.length; i++) {
            JsonNode d = sh.get(i);
            if (!d.isIntegralNumber() || !d.canConvertToLong() || d.longValue() < 0 || d.longValue() > Integer.MAX_VALUE) {
                throw fail(path, where + ": shape " + sh + " has dimension " + d
                        + " (dimensions must be integers in [0, " + Integer.MAX_VALUE + "])");
            }
            shape[i] = d.intValue();
        }
        JsonNode off = node.get("data_offsets");
        if (off == null || !off.isArray() || off.size() != 2) {
            throw fail(path, where + ": \"data_offsets\" must be an array [begin, end], found " + off);
        }
        for (JsonNode o : off) {
            if (!o.isIntegralNumber() || !o.canConvertToLong() || o.longValue() < 0) {
                throw fail(path, where + ": data_offsets " + off + " must be non-negative integers");
            }
        }
        long begin = off.get(0).longValue();
        long end = off.get(1).longValue();
        if (end < begin) {
            throw fail(path, where + ": data_offsets [" + begin + ", " + end + "] end before they begin");
        }
        if (end > dataLen) {
            throw fail(path, where + ": data_offsets [" + begin + ", " + end + "] run past the end of the "
                    + dataLen + "-byte data section (file truncated?)");
        }
        long need;
        try {
            need = Math.multiplyExact(numel(shape), dtype.bytes());
        } catch (ArithmeticException e) {
            throw fail(path, where + ": shape " + Arrays.toString(shape) + " overflows a 64-bit byte count");
        }
        if (end - begin != need) {
            throw fail(path, where + ": data_offsets [" + begin + ", " + end + "] span " + (end - begin)
                    + " bytes but shape " + Arrays.toString(shape) + " " + dtype.safetensorsName() + " needs " + need);
        }
        return new Info(name, dtype, shape, begin, end);
    }

    /** Tensors must cover [0, dataLen) exactly, as the reference implementation requires. */
    private static void checkTiling(Path path, List<Info> infos, long dataLen, long fileSize, long headerLen)
            throws SafeTensorsFormatException {
        List<Info> sorted = new ArrayList<>(infos);
        sorted.sort(Comparator.comparingLong(Info::begin).thenComparingLong(Info::end));
        long pos = 0;
        Info prev = null;
        for (Info i : sorted) {
            if (i.begin() < pos) {
                throw fail(path, "tensor '" + i.name() + "' data_offsets [" + i.begin() + ", " + i.end()
                        + "] overlap tensor '" + prev.name() + "' [" + prev.begin() + ", " + prev.end() + "]");
            }
            if (i.begin() > pos) {
                throw fail(path, "tensor '" + i.name() + "' data_offsets [" + i.begin() + ", " + i.end()
                        + "] leave a gap: bytes [" + pos + ", " + i.begin() + ") belong to no tensor");
            }
            pos = i.end();
            prev = i;
        }
        if (pos != dataLen) {
            throw fail(path, "data section is " + dataLen + " bytes (file " + fileSize + " = 8 + header "
                    + headerLen + " + data) but the tensors cover " + pos + " bytes");
        }
    }

    static long numel(int[] shape) {
        long n = 1;
        for (int d : shape) {
            n = Math.multiplyExact(n, (long) d);
        }
        return n;
    }

    private static void readFully(FileChannel ch, ByteBuffer dst, long position) throws IOException {
        long pos = position;
        while (dst.hasRemaining()) {
            int r = ch.read(dst, pos);
            if (r < 0) {
                throw new IOException("unexpected end of file at byte " + pos);
            }
            pos += r;
        }
    }

    private static SafeTensorsFormatException fail(Path path, String msg) {
        return new SafeTensorsFormatException(path + ": " + msg);
    }

    private static SafeTensorsFormatException fail(Path path, String msg, Throwable cause) {
        return new SafeTensorsFormatException(path + ": " + msg, cause);
    }
}
