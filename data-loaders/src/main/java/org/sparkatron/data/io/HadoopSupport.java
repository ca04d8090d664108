package org.sparkatron.data.io;

import java.io.IOException;
import java.io.OutputStream;
import java.net.URI;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/** The only class besides {@link HadoopByteSource} that touches Hadoop; loaded for remote paths only. */
final class HadoopSupport {
    private HadoopSupport() {
    }

    static Configuration conf(Map<String, String> entries) {
        Configuration c = new Configuration();
        if (entries != null) {
            entries.forEach(c::set);
        }
        return c;
    }

    static ByteSource open(String path, Map<String, String> entries) throws IOException {
        Configuration c = conf(entries);
        Path p = new Path(URI.create(path));
        if (!p.getFileSystem(c).exists(p)) {
            throw new IOException(path + ": no such file");
        }
        return new HadoopByteSource(path, c);
    }

    static OutputStream create(String path, Map<String, String> entries) throws IOException {
        Path p = new Path(URI.create(path));
        return p.getFileSystem(conf(entries)).create(p, true);
    }

    static boolean exists(String path, Map<String, String> entries) throws IOException {
        Path p = new Path(URI.create(path));
        return p.getFileSystem(conf(entries)).exists(p);
    }
}
