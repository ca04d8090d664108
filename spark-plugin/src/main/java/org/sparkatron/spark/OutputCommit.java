package org.sparkatron.spark;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileContext;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Options;
import org.apache.hadoop.fs.Path;

/**
 * A job's results written under a temporary name and moved into place only when the job succeeds, as
 * Hadoop's output committers do: files go to {@code OUTPUT/_temporary/sparkatron-<id>/} (names starting
 * with {@code _} are hidden from Hadoop and Spark readers), and {@link #commit} renames each into
 * {@code OUTPUT}, replacing what is there, model weights before their config. A job that fails or is
 * killed before the commit leaves the previous results untouched; {@link #abort} (or, after a killed
 * driver, any later deletion) removes the staging directory. Creating the staging directory at the start
 * also proves, before any training, that the output can be written.
 *
 * <p>On HDFS each rename is atomic; on the local file system too. The commit as a whole is not: killed
 * between two renames, the directory holds some new and some old files (the window is a few renames).
 * Not thread-safe: one job's driver thread.
 */
final class OutputCommit {
    /** The parent of every job's staging directory under the output. */
    static final String TEMPORARY = "_temporary";

    /** Files committed first (weights before the config that describes them), then the rest by name. */
    private static final List<String> FIRST = List.of("model.safetensors", "config.json");

    private final Configuration conf;
    private final Path output;
    private final Path staging;

    private OutputCommit(Path output, Path staging, Configuration conf) {
        this.output = output;
        this.staging = staging;
        this.conf = conf;
    }

    /**
     * Creates {@code output/_temporary/sparkatron-<random id>}; refused (IllegalArgumentException naming
     * the output) when that cannot be written.
     */
    static OutputCommit begin(String output, Configuration conf) {
        Path out = new Path(output);
        Path staging = new Path(new Path(out, TEMPORARY), "sparkatron-" + UUID.randomUUID());
        try {
            FileSystem fs = out.getFileSystem(conf);
            if (fs.exists(out) && !fs.getFileStatus(out).isDirectory()) {
                throw new IllegalArgumentException("output '" + output + "' is a file, not a directory");
            }
            if (!fs.mkdirs(staging)) {
                throw new IOException("cannot create " + staging);
            }
        } catch (IOException e) {
            throw new IllegalArgumentException("output '" + output + "' cannot be written: " + e.getMessage(), e);
        }
        return new OutputCommit(out, staging, conf);
    }

    /** Where the job writes its results until {@link #commit}. */
    String staging() {
        return staging.toString();
    }

    /** Moves every staged file into the output (replacing existing ones) and deletes the staging directory. */
    void commit() throws IOException {
        FileSystem fs = staging.getFileSystem(conf);
        List<Path> files = new ArrayList<>();
        collect(fs, staging, files);
        files.sort((a, b) -> Integer.compare(rank(a), rank(b)) != 0 ? Integer.compare(rank(a), rank(b))
                : a.toString().compareTo(b.toString()));
        FileContext fc;
        try {
            fc = FileContext.getFileContext(staging.toUri(), conf);
        } catch (org.apache.hadoop.fs.UnsupportedFileSystemException e) {
            fc = null; // a file system without Hadoop's AbstractFileSystem binding: delete, then rename
        }
        String root = staging.toUri().getPath();
        for (Path f : files) {
            String relative = f.toUri().getPath().substring(root.length() + 1);
            Path target = new Path(output, relative);
            fs.mkdirs(target.getParent());
            if (fc != null) {
                fc.rename(f, target, Options.Rename.OVERWRITE); // atomic on HDFS and local disks
            } else {
                fs.delete(target, false);
                if (!fs.rename(f, target)) {
                    throw new IOException("cannot move " + f + " to " + target);
                }
            }
        }
        abort();
    }

    private static int rank(Path p) {
        int i = FIRST.indexOf(p.getName());
        return i < 0 ? FIRST.size() : i;
    }

    private static void collect(FileSystem fs, Path dir, List<Path> out) throws IOException {
        for (FileStatus s : fs.listStatus(dir)) {
            if (s.isDirectory()) {
                collect(fs, s.getPath(), out);
            } else if (!s.getPath().getName().endsWith(".crc")) { // the local file system's checksums move with their file
                out.add(s.getPath());
            }
        }
    }

    /** Deletes the staging directory (and {@code _temporary} when no other job uses it); never throws. */
    void abort() {
        try {
            FileSystem fs = staging.getFileSystem(conf);
            fs.delete(staging, true);
            Path parent = staging.getParent();
            FileStatus[] left = fs.exists(parent) ? fs.listStatus(parent) : new FileStatus[0];
            if (left.length == 0) {
                fs.delete(parent, false);
            }
        } catch (IOException e) {
            // a leftover staging directory is harmless (hidden from readers); it can be deleted by hand
        }
    }
}
