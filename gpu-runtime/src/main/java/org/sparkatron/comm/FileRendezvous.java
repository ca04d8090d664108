package org.sparkatron.comm;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;

/**
 * Rendezvous for processes on one host (or on hosts sharing a file system) through a directory: rank r
 * writes {@code round-K.rank-r} atomically (write then rename) and polls for the others. Used by the
 * multi-process tests and {@code ./sparkatron bench-comm}; the directory must be fresh for each job.
 *
 * <p>Blocking: polls every 5 ms until all blobs of the round exist, at most {@code timeoutMs}, then throws
 * {@link CommException} naming the ranks that are missing. One instance per rank; not thread-safe.
 */
public final class FileRendezvous implements Rendezvous {
    private final Path dir;
    private final int rank;
    private final int size;
    private final long timeoutMs;
    private int round;

    public FileRendezvous(Path dir, int rank, int size, long timeoutMs) {
        if (rank < 0 || rank >= size) {
            throw new IllegalArgumentException("rank " + rank + " outside [0, " + size + ")");
        }
        this.dir = dir;
        this.rank = rank;
        this.size = size;
        this.timeoutMs = timeoutMs;
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return size;
    }

    @Override
    public byte[][] allGather(byte[] mine) {
        int k = round++;
        try {
            Files.createDirectories(dir);
            Path tmp = dir.resolve("tmp-" + k + "-" + rank);
            Files.write(tmp, mine);
            Files.move(tmp, file(k, rank), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
            byte[][] out = new byte[size][];
            while (true) {
                List<Integer> missing = new ArrayList<>();
                for (int r = 0; r < size; r++) {
                    if (out[r] == null && Files.exists(file(k, r))) {
                        out[r] = Files.readAllBytes(file(k, r));
                    }
                    if (out[r] == null) {
                        missing.add(r);
                    }
                }
                if (missing.isEmpty()) {
                    return out;
                }
                if (System.nanoTime() > deadline) {
                    throw new CommException("file rendezvous " + dir + " round " + k + ": rank " + rank + " waited "
                            + timeoutMs + " ms; ranks that never arrived: " + missing, missing.get(0));
                }
                Thread.sleep(5);
            }
        } catch (IOException e) {
            throw new UncheckedIOException("file rendezvous in " + dir + " failed on rank " + rank, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CommException("file rendezvous interrupted on rank " + rank, -1, e);
        }
    }

    private Path file(int k, int r) {
        return dir.resolve("round-" + k + ".rank-" + r);
    }
}
