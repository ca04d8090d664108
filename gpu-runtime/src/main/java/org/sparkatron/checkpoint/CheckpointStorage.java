package org.sparkatron.checkpoint;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.file.Path;
import java.util.List;

/**
 * The file operations a distributed checkpoint needs, so the checkpoint code runs on any file system:
 * {@link LocalStorage} (java.nio) here, a Hadoop {@code FileSystem} implementation (HDFS, S3A, ABFS) in the
 * data-loaders module. Paths are strings in the implementation's syntax; {@link #child} joins them.
 *
 * <p>Threading: implementations are thread-safe (several ranks of one JVM share one). Blocking: every call
 * may block on I/O. Failure: {@link IOException} naming the path; nothing here retries.
 */
public interface CheckpointStorage {
    /** {@code dir} joined with a simple {@code name}. */
    String child(String dir, String name);

    boolean exists(String path) throws IOException;

    /** Names (not paths) of the entries directly under {@code dir}; empty if {@code dir} does not exist. */
    List<String> list(String dir) throws IOException;

    /** Creates a directory and its parents; no-op if it exists. */
    void mkdirs(String dir) throws IOException;

    /** Length in bytes of a file. */
    long length(String path) throws IOException;

    /** Creates or replaces a file; the caller closes the stream, and the file is durable after close. */
    OutputStream create(String path) throws IOException;

    InputStream open(String path) throws IOException;

    /**
     * Renames a directory; the target must not exist. Atomic on local disks and HDFS; on object stores it
     * may copy file by file, which the checkpoint's per-file sizes and checksums detect if interrupted.
     */
    void rename(String from, String to) throws IOException;

    /** Deletes a file or a directory tree; no-op if absent. */
    void delete(String path) throws IOException;

    /**
     * The local file behind {@code path} when this storage is a local disk (then shards are written and
     * memory-mapped in place), else null (then they are staged through a local temporary file).
     */
    default Path localFile(String path) {
        return null;
    }
}
