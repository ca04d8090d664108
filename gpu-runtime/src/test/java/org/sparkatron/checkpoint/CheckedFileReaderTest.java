package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.ReadableByteChannel;
import java.nio.channels.WritableByteChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * {@link CheckedFileReader}, through mappings, with reads and choosing by residency: the targets receive exactly the
 * file's bytes at their offsets (across window and piece edges, overlapping each other, at the file's end, with a
 * non-zero buffer position, empty), whatever they do not cover is still checksummed (a flipped byte there is
 * "corrupted"), on one thread and on three, and a wrong size, a target beyond the end and a file truncated while it is
 * read (either way) are errors naming the file.
 */
class CheckedFileReaderTest {
    private static final int WINDOW = 3 * 4096 + 4096; // 16 KiB windows, 1000-byte pieces: many edges in a small file
    private static final int PIECE = 1000;

    @TempDir
    Path tmp;

    private byte[] data;
    private Path file;

    private String crc() {
        CRC32C c = new CRC32C();
        c.update(data);
        return ShardFiles.hex(c.getValue());
    }

    private void write(int n) throws IOException {
        data = new byte[n];
        new SplittableRandom(5).nextBytes(data);
        file = tmp.resolve("f.bin");
        Files.write(file, data);
    }

    private static CheckedFileReader.Target target(long offset, int len, boolean direct, int position) {
        ByteBuffer b = direct ? ByteBuffer.allocateDirect(position + len) : ByteBuffer.allocate(position + len);
        b.position(position);
        return new CheckedFileReader.Target(offset, b);
    }

    private void read(List<CheckedFileReader.Target> targets, String crc, CheckedFileReader.Source source, int parts)
            throws IOException {
        for (CheckedFileReader.Target t : targets) { // zeros first: what a read leaves out shows
            for (int i = t.dst().position(); i < t.dst().limit(); i++) {
                t.dst().put(i, (byte) 0);
            }
        }
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            CheckedFileReader.read(ch, () -> FileChannel.open(file, StandardOpenOption.READ), file.toString(), data.length, crc, targets,
                    WINDOW, PIECE, source, parts);
        }
    }

    @ParameterizedTest
    @EnumSource(CheckedFileReader.Source.class)
    void targetsGetTheFilesBytesAndTheWholeFileIsChecked(CheckedFileReader.Source source) throws Exception {
        write(5 * WINDOW + 123);
        List<CheckedFileReader.Target> targets = new ArrayList<>();
        targets.add(target(0, 8, true, 0)); // the start
        targets.add(target(WINDOW - 7, 2 * WINDOW + 500, true, 0)); // across windows and pieces
        targets.add(target(WINDOW + 10, 3000, false, 11)); // inside the previous one, a heap buffer with a position
        targets.add(target(data.length - 77, 77, true, 3)); // the end
        targets.add(target(4 * WINDOW, 0, true, 0)); // empty
        targets.add(target(999, 2, true, 0)); // across a piece edge
        for (int parts : new int[] {1, 3}) { // one thread, and three (boundaries inside windows and targets)
            read(new ArrayList<>(List.of(targets.get(3), targets.get(0), targets.get(2), targets.get(1), targets.get(5),
                    targets.get(4))), crc(), source, parts); // in no particular order
            check(targets);
            read(List.of(), crc(), source, parts); // no targets: a pure check
        }
    }

    private void check(List<CheckedFileReader.Target> targets) {
        for (CheckedFileReader.Target t : targets) {
            ByteBuffer b = t.dst().duplicate();
            byte[] got = new byte[b.remaining()];
            b.get(got);
            byte[] want = java.util.Arrays.copyOfRange(data, (int) t.offset(), (int) t.end());
            assertArrayEquals(want, got, "target at " + t.offset());
            assertEquals(t.dst().limit() - got.length, t.dst().position(), "the target's position is left as it was");
        }
    }

    @ParameterizedTest
    @EnumSource(CheckedFileReader.Source.class)
    void aFlippedByteOutsideEveryTargetIsCorruption(CheckedFileReader.Source source) throws Exception {
        write(2 * WINDOW + 5);
        String good = crc();
        data[WINDOW + 3] ^= 1;
        Files.write(file, data);
        for (int parts : new int[] {1, 3}) {
            CheckpointException e = assertThrows(CheckpointException.class,
                    () -> read(List.of(target(0, 100, true, 0)), good, source, parts));
            assertTrue(e.getMessage().contains(file.toString()) && e.getMessage().contains("corrupted: CRC32C "), e.getMessage());
        }
    }

    @Test
    void wrongSizesAndTargetsBeyondTheEndAreRefused() throws Exception {
        write(10_000);
        CheckpointException shorter = assertThrows(CheckpointException.class,
                () -> CheckedFileReader.read(file, "F", 10_001, crc(), List.of()));
        assertEquals("F: truncated: 10000 bytes, the metadata says 10001", shorter.getMessage());
        CheckpointException longer = assertThrows(CheckpointException.class,
                () -> CheckedFileReader.read(file, "F", 9_999, crc(), List.of()));
        assertEquals("F: longer than written: 10000 bytes, the metadata says 9999", longer.getMessage());
        CheckpointException beyond = assertThrows(CheckpointException.class,
                () -> CheckedFileReader.read(file, "F", 10_000, crc(), List.of(target(9_990, 11, true, 0))));
        assertTrue(beyond.getMessage().startsWith("F: bytes 9990..10001 are beyond the file's end"), beyond.getMessage());
    }

    @ParameterizedTest
    @EnumSource(value = CheckedFileReader.Source.class, names = {"MAPPED", "READ"})
    void aFileTruncatedWhileItIsReadIsAnErrorNotACrash(CheckedFileReader.Source source) throws Exception {
        write(4 * WINDOW);
        try (FileChannel real = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            // cut to one page once the second window is mapped, or after 20 pieces were read
            FileChannel truncating = new TruncatingChannel(real, source == CheckedFileReader.Source.MAPPED ? 2 : 20);
            CheckpointException e = assertThrows(CheckpointException.class,
                    () -> CheckedFileReader.read(truncating, () -> null, "F", data.length, crc(), List.of(target(0, data.length, true, 0)),
                            WINDOW, PIECE, source, 1));
            assertTrue(e.getMessage().startsWith("F: truncated while being read ("), e.getMessage());
            if (source == CheckedFileReader.Source.READ) { // 17 pieces a window, so after the 20th the second window's fourth
                assertEquals("F: truncated while being read (at byte " + (WINDOW + 3 * PIECE) + " of " + data.length + ")",
                        e.getMessage());
            } // MAPPED: the JVM reports the fault when it gets to it, maybe a window later
        }
    }

    /** A file channel that truncates its file to 4096 bytes right after its {@code n}-th mapping or positional read. */
    private static final class TruncatingChannel extends FileChannel {
        private final FileChannel ch;
        private int events;
        private final int truncateAfter;

        TruncatingChannel(FileChannel ch, int truncateAfter) {
            this.ch = ch;
            this.truncateAfter = truncateAfter;
        }

        @Override
        public MappedByteBuffer map(MapMode mode, long position, long size) throws IOException {
            MappedByteBuffer m = ch.map(mode, position, size);
            event();
            return m;
        }

        private void event() throws IOException {
            if (++events == truncateAfter) {
                ch.truncate(4096);
            }
        }

        @Override
        public long size() throws IOException {
            return ch.size();
        }

        @Override
        public int read(ByteBuffer dst) throws IOException {
            return ch.read(dst);
        }

        @Override
        public long read(ByteBuffer[] dsts, int offset, int length) throws IOException {
            return ch.read(dsts, offset, length);
        }

        @Override
        public int write(ByteBuffer src) throws IOException {
            return ch.write(src);
        }

        @Override
        public long write(ByteBuffer[] srcs, int offset, int length) throws IOException {
            return ch.write(srcs, offset, length);
        }

        @Override
        public long position() throws IOException {
            return ch.position();
        }

        @Override
        public FileChannel position(long p) throws IOException {
            ch.position(p);
            return this;
        }

        @Override
        public FileChannel truncate(long s) throws IOException {
            ch.truncate(s);
            return this;
        }

        @Override
        public void force(boolean metaData) throws IOException {
            ch.force(metaData);
        }

        @Override
        public long transferTo(long position, long count, WritableByteChannel target) throws IOException {
            return ch.transferTo(position, count, target);
        }

        @Override
        public long transferFrom(ReadableByteChannel src, long position, long count) throws IOException {
            return ch.transferFrom(src, position, count);
        }

        @Override
        public int read(ByteBuffer dst, long position) throws IOException {
            int n = ch.read(dst, position);
            event();
            return n;
        }

        @Override
        public int write(ByteBuffer src, long position) throws IOException {
            return ch.write(src, position);
        }

        @Override
        public FileLock lock(long position, long size, boolean shared) throws IOException {
            return ch.lock(position, size, shared);
        }

        @Override
        public FileLock tryLock(long position, long size, boolean shared) throws IOException {
            return ch.tryLock(position, size, shared);
        }

        @Override
        protected void implCloseChannel() throws IOException {
            ch.close();
        }
    }
}
