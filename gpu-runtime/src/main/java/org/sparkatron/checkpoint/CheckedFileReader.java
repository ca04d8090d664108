package org.sparkatron.checkpoint;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.zip.CRC32C;
import org.sparkatron.tensor.Unmapper;

/**
 * Reads a local checkpoint file once, front to back, computing the CRC32C of all its bytes and copying the byte
 * ranges a load needs into their destinations as it goes (one pass over the file instead of a checksum pass and
 * a copy pass). The file goes by windows of {@link #WINDOW} bytes: a window already in the page cache (all its pages,
 * by {@code mincore}) is copied from a mapping of it, any other with positional {@code read}s; either way every
 * {@link #PIECE} lands in a small scratch buffer (the only access to the mapping: a copy, which turns a file truncated
 * under us into an error instead of a crash), is checksummed there and copied on into the destinations that overlap
 * it while it is still in the core's cache. Why both: measured on this project's VM (360 MB, medians of 7), a file in
 * the page cache took 0.11 s through mappings and 0.21 s with reads (a mapping maps the cached pages, a read copies
 * them), a file not in the cache 0.50 s through mappings (page faults read ahead less, and synchronously) and 0.34 s
 * with reads (docs/checkpoints.md). A file of more than {@link #MIN_PART} bytes is read in up to {@link #MAX_THREADS}
 * parts at once (one per core), each checksummed on its own thread and the checksums combined: several requests in
 * flight are what a disk needs (a 360 MB checkpoint just written with direct I/O loaded in 0.23-0.27 s instead of
 * 0.79 s on 2 cores).
 *
 * <p>Destinations are written before the checksum is known: a caller must not use them unless {@link #read}
 * returns normally (a {@link CheckpointException} means the file is corrupted or changed while read, and the
 * destinations hold unspecified bytes). Destinations may overlap each other and need not cover the file.
 *
 * <p>Threading: stateless; each call uses its own buffers, on the calling thread and, for a large file, up to three
 * threads of its own that have ended when it returns. Blocking: file I/O.
 */
final class CheckedFileReader {
    /** Bytes mapped at a time: bounds the address space used, whatever the file's size. */
    static final int WINDOW = 64 << 20;
    /** Copied, checksummed and scattered at a time: fits the core's cache. */
    static final int PIECE = 256 << 10;
    /** At most this many threads read one file at once (one per part of at least {@link #MIN_PART} bytes, one per core). */
    static final int MAX_THREADS = 4;
    static final long MIN_PART = 32 << 20;

    private CheckedFileReader() {
    }

    /** Copy the file's bytes from {@code offset} into {@code dst} (its remaining bytes; its position is left as is). */
    record Target(long offset, ByteBuffer dst) {
        long end() {
            return offset + dst.remaining();
        }
    }

    /**
     * Reads {@code file} ({@code bytes} bytes, named {@code name} in errors) into the targets and checks its CRC32C
     * against {@code expectedCrc} (8 lower-case hex digits).
     *
     * @throws CheckpointException naming the file when its size differs from {@code bytes} ("truncated", "longer
     *     than written"), a target lies beyond its end, or the checksum differs ("corrupted")
     */
    static void read(Path file, String name, long bytes, String expectedCrc, List<Target> targets) throws IOException {
        int threads = Math.min(MAX_THREADS, Runtime.getRuntime().availableProcessors());
        int parts = (int) Math.max(1, Math.min(threads, bytes / MIN_PART));
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            read(ch, () -> FileChannel.open(file, StandardOpenOption.READ), name, bytes, expectedCrc, targets, WINDOW, PIECE,
                    Source.BY_RESIDENCY, parts);
        }
    }

    /** Opens another channel on the file (each part reads through its own: the kernel reads ahead per open file). */
    interface Opener {
        FileChannel open() throws IOException;
    }

    /** How a window's bytes are fetched. */
    enum Source {
        /** From the mapping when the window is all in the page cache ({@code mincore}), else with {@code read}. */
        BY_RESIDENCY,
        /** Always from the mapping (tests). */
        MAPPED,
        /** Always with {@code read} (tests). */
        READ
    }

    /**
     * {@link #read(Path, String, long, String, List)} with other window and piece sizes, sources and numbers of
     * parts (tests). The file is split into {@code parts} consecutive ranges read at once, the first on the calling
     * thread, each other on a thread of its own, each with its own checksum; the checksums are combined
     * ({@link Crc32cCombine}). The first part reads through {@code ch}, the others through channels from {@code opener}
     * (closed when done). Every thread has ended when this returns or throws.
     */
    static void read(FileChannel ch, Opener opener, String name, long bytes, String expectedCrc, List<Target> targets, int window,
                     int piece, Source source, int parts) throws IOException {
        long size = ch.size();
        if (size != bytes) {
            throw sizeError(name, size, bytes);
        }
        List<Target> sorted = new ArrayList<>(targets);
        sorted.sort(Comparator.comparingLong(Target::offset));
        for (Target t : sorted) {
            if (t.offset() < 0 || t.end() > bytes) {
                throw new CheckpointException(name + ": bytes " + t.offset() + ".." + t.end() + " are beyond the file's end ("
                        + bytes + " bytes)", true);
            }
        }
        long[] starts = new long[parts + 1];
        for (int i = 1; i < parts; i++) {
            starts[i] = bytes * i / parts / piece * piece;
        }
        starts[parts] = bytes;
        List<java.util.concurrent.FutureTask<Long>> others = new ArrayList<>();
        List<Thread> threads = new ArrayList<>();
        for (int i = 1; i < parts; i++) {
            long from = starts[i];
            long to = starts[i + 1];
            java.util.concurrent.FutureTask<Long> task = new java.util.concurrent.FutureTask<>(() -> {
                try (FileChannel own = opener.open()) {
                    return range(own, name, bytes, from, to, window, piece, source, sorted);
                }
            });
            Thread t = new Thread(task, "sparkatron-checkpoint-read");
            t.setDaemon(true);
            others.add(task);
            threads.add(t);
            t.start();
        }
        long crc;
        IOException failure = null;
        try {
            crc = range(ch, name, bytes, 0, starts[1], window, piece, source, sorted);
        } catch (IOException e) {
            failure = e;
            crc = 0;
        } finally {
            joinAll(threads); // no thread may write into the targets after this returns
        }
        for (int i = 0; i < others.size(); i++) {
            try {
                long part = others.get(i).get();
                crc = Crc32cCombine.combine(crc, part, starts[i + 2] - starts[i + 1]);
            } catch (java.util.concurrent.ExecutionException e) {
                if (failure == null) {
                    Throwable c = e.getCause();
                    failure = c instanceof IOException io ? io : new IOException(name + ": " + c, c);
                }
            } catch (InterruptedException e) {
                throw new IllegalStateException("a joined thread's task is done", e);
            }
        }
        if (failure != null) {
            throw failure;
        }
        if (ch.size() != bytes) {
            throw new CheckpointException(name + ": truncated while being read (" + ch.size() + " bytes left of " + bytes + ")",
                    true);
        }
        String got = ShardFiles.hex(crc);
        if (!got.equals(expectedCrc)) {
            throw new CheckpointException(name + ": corrupted: CRC32C " + got + ", the metadata says " + expectedCrc, true);
        }
    }

    /** Reads bytes {@code from..to} of the file into the targets (by windows) and returns their CRC32C. */
    private static long range(FileChannel ch, String name, long bytes, long from, long to, int window, int piece, Source source,
                              List<Target> sorted) throws IOException {
        CRC32C crc = new CRC32C();
        ByteBuffer scratch = ByteBuffer.allocateDirect(piece);
        int first = 0; // sorted[first..] may still overlap what is left of the range
        long w = from;
        try {
            for (; w < to; w += window) {
                int wlen = (int) Math.min(window, to - w);
                MappedByteBuffer map = source == Source.READ ? null : ch.map(FileChannel.MapMode.READ_ONLY, w, wlen);
                try {
                    boolean mapped = source == Source.MAPPED || source == Source.BY_RESIDENCY && map.isLoaded();
                    first = scatter(mapped ? map : null, ch, name, w, wlen, bytes, piece, scratch, crc, sorted, first);
                } finally {
                    if (map != null) {
                        Unmapper.unmap(map);
                    }
                }
            }
        } catch (InternalError e) {
            // SIGBUS on a page beyond a file truncated after the size check; the JVM reports it as this error, at the
            // access or (asynchronously) soon after it, so it is caught around the whole loop and names no exact byte
            throw new CheckpointException(name + ": truncated while being read (by byte " + Math.min(w + window, to) + " of " + bytes
                    + ")", e, true);
        }
        return crc.getValue();
    }

    /** Waits for every thread to end, even when interrupted (then the interrupt is kept for the caller). */
    private static void joinAll(List<Thread> threads) {
        boolean interrupted = false;
        for (Thread t : threads) {
            while (t.isAlive()) {
                try {
                    t.join();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * One window: per piece, copied into {@code scratch} (from {@code map}, or when it is null read from {@code ch}),
     * checksummed there, then copied into the targets that overlap it. Returns the new index of the first target not
     * yet done.
     */
    private static int scatter(MappedByteBuffer map, FileChannel ch, String name, long w, int wlen, long bytes, int piece,
                               ByteBuffer scratch, CRC32C crc, List<Target> sorted, int first) throws IOException {
        for (int p = 0; p < wlen; p += piece) {
            int k = Math.min(piece, wlen - p);
            long from = w + p;
            long to = from + k;
            scratch.clear().limit(k);
            if (map != null) {
                scratch.put(0, map, p, k);
            } else {
                while (scratch.hasRemaining()) {
                    if (ch.read(scratch, from + scratch.position()) < 0) {
                        throw new CheckpointException(name + ": truncated while being read (at byte " + (from + scratch.position())
                                + " of " + bytes + ")", true);
                    }
                }
                scratch.flip();
            }
            crc.update(scratch);
            while (first < sorted.size() && sorted.get(first).end() <= from) {
                first++;
            }
            for (int i = first; i < sorted.size() && sorted.get(i).offset() < to; i++) {
                Target t = sorted.get(i);
                long a = Math.max(from, t.offset());
                long b = Math.min(to, t.end());
                if (a < b) {
                    t.dst().put(t.dst().position() + (int) (a - t.offset()), scratch, (int) (a - from), (int) (b - a));
                }
            }
        }
        return first;
    }

    static CheckpointException sizeError(String name, long actual, long expected) {
        return new CheckpointException(name + ": " + (actual < expected ? "truncated" : "longer than written") + ": " + actual
                + " bytes, the metadata says " + expected, true);
    }
}
