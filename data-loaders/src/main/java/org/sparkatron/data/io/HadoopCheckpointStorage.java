package org.sparkatron.data.io;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.URI;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.sparkatron.checkpoint.CheckpointStorage;
import org.sparkatron.checkpoint.LocalStorage;

/**
 * {@link CheckpointStorage} on a Hadoop {@code FileSystem} (HDFS, S3A, ABFS, ...): paths are URIs, files
 * are streamed (the checkpoint code stages shards through local temporary files), {@code create} returns
 * once {@code close} has flushed the stream ({@code hsync} where the file system supports it). Directory
 * rename is atomic on HDFS; on object stores it copies, which the checkpoint's per-file sizes and CRC32C
 * checks cover. Thread-safe (Hadoop caches one FileSystem per scheme and authority).
 */
public final class HadoopCheckpointStorage implements CheckpointStorage {
    private final Configuration conf;

    public HadoopCheckpointStorage(Map<String, String> hadoopConf) {
        this.conf = HadoopSupport.conf(hadoopConf);
    }

    /** Local paths get {@link LocalStorage} (no Hadoop class loaded), others this Hadoop storage. */
    public static CheckpointStorage forPath(String path, Map<String, String> hadoopConf) {
        return DataPaths.isLocal(path) ? new LocalStorage() : new HadoopCheckpointStorage(hadoopConf);
    }

    private FileSystem fs(Path p) throws IOException {
        return p.getFileSystem(conf);
    }

    private static Path p(String path) {
        return new Path(URI.create(path));
    }

    @Override
    public String child(String dir, String name) {
        return new Path(p(dir), name).toString();
    }

    @Override
    public boolean exists(String path) throws IOException {
        return fs(p(path)).exists(p(path));
    }

    @Override
    public List<String> list(String dir) throws IOException {
        List<String> out = new ArrayList<>();
        try {
            for (FileStatus s : fs(p(dir)).listStatus(p(dir))) {
                out.add(s.getPath().getName());
            }
        } catch (FileNotFoundException e) {
            // no directory: no entries
        }
        return out;
    }

    @Override
    public void mkdirs(String dir) throws IOException {
        if (!fs(p(dir)).mkdirs(p(dir))) {
            throw new IOException(dir + ": cannot create directory");
        }
    }

    @Override
    public long length(String path) throws IOException {
        return fs(p(path)).getFileStatus(p(path)).getLen();
    }

    @Override
    public OutputStream create(String path) throws IOException {
        org.apache.hadoop.fs.FSDataOutputStream hout = fs(p(path)).create(p(path), true);
        return new java.io.FilterOutputStream(hout) {
            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                hout.write(b, off, len);
            }

            @Override
            public void close() throws IOException {
                try {
                    hout.hsync();
                } catch (UnsupportedOperationException e) {
                    // object stores persist on close
                } finally {
                    hout.close();
                }
            }
        };
    }

    @Override
    public InputStream open(String path) throws IOException {
        return fs(p(path)).open(p(path));
    }

    @Override
    public void rename(String from, String to) throws IOException {
        FileSystem f = fs(p(from));
        if (f.exists(p(to))) {
            throw new FileAlreadyExistsException(to + ": cannot rename " + from + " over an existing entry");
        }
        if (!f.rename(p(from), p(to))) {
            throw new IOException("cannot rename " + from + " to " + to);
        }
    }

    @Override
    public void delete(String path) throws IOException {
        FileSystem f = fs(p(path));
        if (f.exists(p(path)) && !f.delete(p(path), true)) {
            throw new IOException(path + ": cannot delete");
        }
    }
}
