package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link DirectFileWriter}: the file holds exactly the parts' bytes (lengths that are not multiples of the block
 * size, parts larger than the buffer, a heap and a direct buffer, an empty part), the checksum is that of those
 * bytes, the parts are left unread, and a longer earlier file at the same path is replaced.
 */
class DirectFileWriterTest {
    @TempDir
    Path tmp;

    private static ByteBuffer random(SplittableRandom rng, int n, boolean direct) {
        byte[] b = new byte[n];
        rng.nextBytes(b);
        ByteBuffer buf = direct ? ByteBuffer.allocateDirect(n) : ByteBuffer.allocate(n);
        buf.put(b).flip();
        return buf;
    }

    @Test
    void writesExactlyThePartsBytesAndTheirChecksum() throws Exception {
        SplittableRandom rng = new SplittableRandom(3);
        int[][] cases = {{8, 1234, 0, 4096 * 3 + 1}, {DirectFileWriter.BUFFER + 17, 5, DirectFileWriter.BUFFER - 5},
            {4096}, {}, {1}};
        for (int c = 0; c < cases.length; c++) {
            Path file = tmp.resolve("f" + c);
            Files.write(file, new byte[DirectFileWriter.BUFFER * 3]); // a longer file there before: replaced
            List<ByteBuffer> parts = new ArrayList<>();
            ByteArrayOutputStream expected = new ByteArrayOutputStream();
            for (int i = 0; i < cases[c].length; i++) {
                ByteBuffer part = random(rng, cases[c][i], i % 2 == 0);
                parts.add(part);
                byte[] b = new byte[part.remaining()];
                part.duplicate().get(b);
                expected.write(b);
            }
            ShardFiles.Written w = DirectFileWriter.write(file, parts);
            assumeTrue(w != null, "this file system refuses direct I/O");
            byte[] want = expected.toByteArray();
            assertEquals(want.length, w.bytes());
            assertArrayEquals(want, Files.readAllBytes(file), "case " + c);
            CRC32C ref = new CRC32C();
            ref.update(want);
            assertEquals(ref.getValue(), w.crc(), "case " + c);
            for (int i = 0; i < parts.size(); i++) {
                assertEquals(0, parts.get(i).position(), "part " + i + " left unread");
            }
        }
    }
}
