package org.sparkatron.spark;

import java.io.IOException;
import java.io.OutputStream;
import java.net.URI;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.util.Progressable;

/**
 * The local disk under the scheme {@code faulty:}, failing like a full disk: writing a file named
 * {@code model.safetensors} throws after its first 1000 bytes (the file is left truncated, as a real
 * failed write leaves it). Everything else is the real local file system. For tests of what a failed save
 * leaves behind; register it as {@code fs.faulty.impl}.
 */
public final class FaultyFileSystem extends RawLocalFileSystem {
    static final String SCHEME = "faulty";
    static final String FAILING_NAME = "model.safetensors";

    @Override
    public URI getUri() {
        return URI.create(SCHEME + ":///");
    }

    @Override
    public String getScheme() {
        return SCHEME;
    }

    @Override
    public FSDataOutputStream create(Path f, FsPermission permission, boolean overwrite, int bufferSize, short replication,
                                     long blockSize, Progressable progress) throws IOException {
        return failing(f, super.create(f, permission, overwrite, bufferSize, replication, blockSize, progress));
    }

    @Override
    public FSDataOutputStream create(Path f, boolean overwrite, int bufferSize, short replication, long blockSize,
                                     Progressable progress) throws IOException {
        return failing(f, super.create(f, overwrite, bufferSize, replication, blockSize, progress));
    }

    private static FSDataOutputStream failing(Path f, FSDataOutputStream real) {
        if (!f.getName().equals(FAILING_NAME)) {
            return real;
        }
        OutputStream failing = new OutputStream() {
            private long written;

            @Override
            public void write(int b) throws IOException {
                write(new byte[] {(byte) b}, 0, 1);
            }

            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                int room = (int) Math.max(0, Math.min(len, 1000 - written));
                real.write(b, off, room);
                written += room;
                if (room < len) {
                    real.close();
                    throw new IOException("No space left on device (injected, writing " + f + ")");
                }
            }

            @Override
            public void close() throws IOException {
                real.close();
            }
        };
        return new FSDataOutputStream(failing, null);
    }
}
