package org.sparkatron.tensor;

import java.nio.ByteBuffer;

/**
 * A block of memory on one device. Host storage is an off-heap direct buffer; device storage holds a
 * device address. Closing releases the memory (host buffers are released by the garbage collector).
 */
public interface Storage extends AutoCloseable {
    /** Raw address of the first byte. */
    long address();

    long byteSize();

    boolean isHost();

    /** The whole block as a native-order direct buffer; only for host storage. */
    ByteBuffer hostBuffer();

    @Override
    default void close() {
    }
}
