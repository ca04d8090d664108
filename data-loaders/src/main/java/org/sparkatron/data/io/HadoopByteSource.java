package org.sparkatron.data.io;

import java.io.IOException;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * A file on any Hadoop FileSystem (HDFS, S3A, ABFS, ...) read with positioned reads
 * ({@code PositionedReadable.readFully(pos, ...)}): each sample costs one ranged read, the shard is
 * never copied whole. Positioned reads do not move the stream's offset, so concurrent reads are safe.
 */
public final class HadoopByteSource implements ByteSource {
    private final String name;
    private final FSDataInputStream in;
    private final long size;

    public HadoopByteSource(String uri, Configuration conf) throws IOException {
        this.name = uri;
        Path p = new Path(URI.create(uri));
        FileSystem fs = p.getFileSystem(conf);
        this.size = fs.getFileStatus(p).getLen();
        this.in = fs.open(p);
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public void read(long pos, ByteBuffer dst) throws IOException {
        int len = dst.remaining();
        checkRange(pos, len);
        if (dst.hasArray()) {
            in.readFully(pos, dst.array(), dst.arrayOffset() + dst.position(), len);
            dst.position(dst.position() + len);
        } else {
            byte[] tmp = new byte[len];
            in.readFully(pos, tmp, 0, len);
            dst.put(tmp);
        }
    }

    @Override
    public ByteBuffer slice(long pos, int len) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(len).order(ByteOrder.LITTLE_ENDIAN);
        read(pos, b);
        b.flip();
        return b;
    }

    @Override
    public void close() throws IOException {
        in.close();
    }
}
