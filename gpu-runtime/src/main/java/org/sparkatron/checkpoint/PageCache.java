package org.sparkatron.checkpoint;

import java.io.IOException;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.sparkatron.tensor.Unmapper;

/**
 * For {@code bench-ckpt}: drops files from the page cache so that a load reads the disk, and checks that it did.
 * Eviction is GNU {@code dd if=FILE iflag=nocache count=0} (a {@code posix_fadvise(POSIX_FADV_DONTNEED)} of the whole
 * file, no root needed; the JDK has no fadvise); it drops clean pages only, and pages a process still maps stay.
 * The check samples pages with {@code mincore} ({@link MappedByteBuffer#isLoaded} on one-page mappings). On a VM the
 * host may still cache the disk's blocks, so "evicted" means not in this machine's page cache, which is what a
 * process that did not just write or read the file sees. Not for library code paths; stateless.
 */
final class PageCache {
    private static final int SAMPLES = 64;

    private PageCache() {
    }

    /** Drops the files' cached pages (waits for {@code dd}). */
    static void evict(List<Path> files) throws IOException, InterruptedException {
        for (Path f : files) {
            Process p = new ProcessBuilder("dd", "if=" + f, "iflag=nocache", "count=0", "status=none").redirectErrorStream(true).start();
            String out = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8).trim();
            if (!p.waitFor(60, TimeUnit.SECONDS) || p.exitValue() != 0) {
                throw new IOException("could not drop " + f + " from the page cache with dd iflag=nocache: " + out);
            }
        }
    }

    /** Of {@value #SAMPLES} pages per file spread evenly over it, how many are in the page cache (summed over the files). */
    static int residentSamples(List<Path> files) throws IOException {
        int resident = 0;
        for (Path f : files) {
            long size = Files.size(f);
            try (FileChannel ch = FileChannel.open(f, StandardOpenOption.READ)) {
                for (int i = 0; i < SAMPLES && size > 0; i++) {
                    long at = size * i / SAMPLES / 4096 * 4096;
                    MappedByteBuffer page = ch.map(FileChannel.MapMode.READ_ONLY, at, Math.min(4096, size - at));
                    resident += page.isLoaded() ? 1 : 0;
                    Unmapper.unmap(page);
                }
            }
        }
        return resident;
    }

    /** Samples that {@link #residentSamples} takes for {@code n} files. */
    static int samples(int n) {
        return n * SAMPLES;
    }
}
