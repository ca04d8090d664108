package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** Malformed files: each is refused by open() with a message naming the file, the tensor and the numbers. */
@Timeout(30)
class SafeTensorsValidationTest {
    @TempDir
    Path dir;

    private int count;

    /** A file with the given header length field and body bytes (header text followed by data). */
    private Path raw(long headerLen, byte[] body) throws IOException {
        Path p = dir.resolve("bad" + (count++) + ".safetensors");
        ByteBuffer b = ByteBuffer.allocate(8 + body.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(headerLen).put(body);
        Files.write(p, b.array());
        return p;
    }

    /** A file whose header is {@code json} (correct length) followed by {@code dataBytes} bytes of data. */
    private Path file(String json, int dataBytes) throws IOException {
        byte[] h = json.getBytes(StandardCharsets.UTF_8);
        byte[] body = Arrays.copyOf(h, h.length + dataBytes);
        return raw(h.length, body);
    }

    private String refused(Path p) {
        SafeTensorsFormatException e = assertThrows(SafeTensorsFormatException.class, () -> SafeTensors.open(p).close());
        assertTrue(e.getMessage().startsWith(p.toString()), "message names the file: " + e.getMessage());
        return e.getMessage();
    }

    private static void assertMentions(String msg, String... parts) {
        for (String part : parts) {
            assertTrue(msg.contains(part), "expected '" + part + "' in: " + msg);
        }
    }

    private static final String GOOD = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";

    @Test
    void wellFormedControlFileOpens() throws IOException {
        try (SafeTensorsFile f = SafeTensors.open(file(GOOD, 24))) {
            assertEquals(6, f.numel("w"));
        }
    }

    @Test
    void truncatedFile() throws IOException {
        assertMentions(refused(file(GOOD, 20)), "tensor 'w'", "[0, 24]", "20-byte data section", "truncated");
    }

    @Test
    void trailingBytesAfterTheLastTensor() throws IOException {
        assertMentions(refused(file(GOOD, 30)), "data section is 30 bytes", "cover 24 bytes");
    }

    @Test
    void fileShorterThanTheLengthField() throws IOException {
        Path p = dir.resolve("tiny.safetensors");
        Files.write(p, new byte[] {1, 2, 3});
        assertMentions(refused(p), "3 bytes", "shorter than the 8-byte header length");
    }

    @Test
    void oversizedHeaderLength() throws IOException {
        assertMentions(refused(raw(200_000_000L, new byte[16])), "header length 200000000", "limit of 100000000");
        // A length with the top bit set (negative as a signed long) is reported as the unsigned number.
        assertMentions(refused(raw(-1L, new byte[16])), "header length 18446744073709551615");
    }

    @Test
    void headerLengthBeyondTheFile() throws IOException {
        assertMentions(refused(raw(1000, "{}".getBytes(StandardCharsets.UTF_8))),
                "header length 1000", "beyond the end of the file (10 bytes");
    }

    @Test
    void malformedJson() throws IOException {
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",", 0)), "not well-formed JSON");
        assertMentions(refused(file(GOOD + " {}", 24)), "not well-formed JSON");
        assertMentions(refused(file("[1,2]", 0)), "must be a JSON object", "array");
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                + "\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0)), "not well-formed JSON", "w");
        byte[] badUtf8 = {'{', '"', (byte) 0xC3, (byte) 0x28, '"', ':', '1', '}'};
        assertMentions(refused(raw(badUtf8.length, badUtf8)), "not valid UTF-8");
    }

    @Test
    void dataOffsetsDisagreeingWithTheShape() throws IOException {
        String j = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[20,24]}}";
        assertMentions(refused(file(j, 24)), "tensor 'w'", "[0, 20]", "span 20 bytes", "[2, 3] F32 needs 24");
    }

    @Test
    void badlyFormedDataOffsets() throws IOException {
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4)),
                "tensor 'w'", "must be an array [begin, end]");
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4)),
                "tensor 'w'", "non-negative");
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4)),
                "tensor 'w'", "[4, 0] end before they begin");
    }

    @Test
    void overlappingTensors() throws IOException {
        String j = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
        assertMentions(refused(file(j, 12)), "tensor 'b'", "[4, 12]", "overlap tensor 'a' [0, 8]");
    }

    @Test
    void gapBetweenTensors() throws IOException {
        String j = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
        assertMentions(refused(file(j, 12)), "tensor 'b'", "gap", "[4, 8)");
    }

    @Test
    void unknownDtype() throws IOException {
        assertMentions(refused(file("{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1)),
                "tensor 'w'", "unsupported safetensors dtype 'Q4_K'");
        assertMentions(refused(file("{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1)), "tensor 'w'", "dtype");
    }

    @Test
    void badShapes() throws IOException {
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}", 0)),
                "tensor 'w'", "shape [2,-3]", "dimension -3");
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4)),
                "tensor 'w'", "dimension 1.5");
        assertMentions(refused(file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2147483647,2147483647,2147483647],"
                + "\"data_offsets\":[0,4]}}", 4)), "tensor 'w'", "overflows");
    }

    @Test
    void badMetadata() throws IOException {
        assertMentions(refused(file("{\"__metadata__\":{\"step\":3}}", 0)), "__metadata__", "'step'", "string");
        assertMentions(refused(file("{\"__metadata__\":[]}", 0)), "__metadata__ must be an object");
    }

    @Test
    void emptyFileWithNoTensorsIsValid() throws IOException {
        try (SafeTensorsFile f = SafeTensors.open(file("{}      ", 0))) {
            assertTrue(f.names().isEmpty());
        }
    }
}
