package org.sparkatron.data.io;

import java.io.IOException;
import java.io.OutputStream;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Map;

/**
 * Opens paths for reading and writing. A path with no scheme or the {@code file:} scheme is local and
 * handled with java.nio (memory-mapped for reading) without loading any Hadoop class, so the module
 * works without Hadoop on the classpath for local data; any other scheme goes through Hadoop's
 * FileSystem with the given configuration entries (e.g. {@code fs.s3a.*}).
 *
 * <p>Stateless and thread-safe.
 */
public final class DataPaths {
    private DataPaths() {
    }

    /** Whether {@code path} names a local file. */
    public static boolean isLocal(String path) {
        String scheme = scheme(path);
        return scheme == null || scheme.equals("file");
    }

    private static String scheme(String path) {
        int colon = path.indexOf(':');
        int slash = path.indexOf('/');
        if (colon <= 1 || (slash >= 0 && slash < colon)) {
            return null; // "rel/path", "/abs/path"; a one-letter scheme would be a Windows drive
        }
        return path.substring(0, colon).toLowerCase(java.util.Locale.ROOT);
    }

    /** The local path of a local {@code path}. */
    public static Path localPath(String path) {
        return scheme(path) == null ? Paths.get(path) : Paths.get(URI.create(path));
    }

    /** Opens {@code path} for random-access reads. */
    public static ByteSource open(String path, Map<String, String> hadoopConf) throws IOException {
        if (isLocal(path)) {
            Path p = localPath(path);
            if (!Files.isRegularFile(p)) {
                throw new IOException(path + ": no such file");
            }
            return new LocalByteSource(p);
        }
        return HadoopSupport.open(path, hadoopConf);
    }

    /** Creates (or overwrites) {@code path}, making parent directories. */
    public static OutputStream create(String path, Map<String, String> hadoopConf) throws IOException {
        if (isLocal(path)) {
            Path p = localPath(path);
            if (p.getParent() != null) {
                Files.createDirectories(p.getParent());
            }
            return new java.io.BufferedOutputStream(Files.newOutputStream(p), 1 << 20);
        }
        return HadoopSupport.create(path, hadoopConf);
    }

    /** Whether {@code path} exists. */
    public static boolean exists(String path, Map<String, String> hadoopConf) throws IOException {
        if (isLocal(path)) {
            return Files.exists(localPath(path));
        }
        return HadoopSupport.exists(path, hadoopConf);
    }

    /** Reads a whole (small) file. */
    public static byte[] readAll(String path, Map<String, String> hadoopConf) throws IOException {
        try (ByteSource src = open(path, hadoopConf)) {
            if (src.size() > Integer.MAX_VALUE - 16) {
                throw new IOException(path + ": too large to read whole (" + src.size() + " bytes)");
            }
            byte[] b = new byte[(int) src.size()];
            src.read(0, java.nio.ByteBuffer.wrap(b));
            return b;
        }
    }

    /** Joins a directory and a file name. */
    public static String child(String dir, String name) {
        return dir.endsWith("/") ? dir + name : dir + "/" + name;
    }
}
