package org.sparkatron.data.io;

import java.io.Closeable;
import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * Random-access bytes of one file: a memory-mapped local file or a remote file read with positioned
 * (ranged) reads. Nothing is copied in full before use.
 *
 * <p>Threading: {@link #read} may be called from several threads at once (each call is one positioned
 * read). Blocking: a remote read blocks on the network. Failure: reads past the end or short reads
 * throw an {@link IOException} naming the file.
 */
public interface ByteSource extends Closeable {
    /** Length of the file in bytes. */
    long size();

    /** Fills {@code dst} from its position to its limit with the bytes at {@code [pos, pos + remaining)}. */
    void read(long pos, ByteBuffer dst) throws IOException;

    /** The path as the user gave it, for messages. */
    String name();

    /**
     * The bytes {@code [pos, pos + len)} as a little-endian buffer: a zero-copy slice of the mapping for
     * local files, a fresh direct buffer for remote ones.
     */
    ByteBuffer slice(long pos, int len) throws IOException;

    /** Refuses a read of {@code len} bytes at {@code pos} that does not lie inside the file. */
    default void checkRange(long pos, int len) throws IOException {
        if (pos < 0 || len < 0 || pos + len > size()) {
            throw new IOException(name() + ": read of " + len + " bytes at offset " + pos + " is past the end of the file ("
                    + size() + " bytes)");
        }
    }
}
