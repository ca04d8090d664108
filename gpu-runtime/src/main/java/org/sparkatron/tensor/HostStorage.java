package org.sparkatron.tensor;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/** Off-heap host memory: a direct, native-order ByteBuffer, 64-byte aligned for SIMD and BLAS. */
public final class HostStorage implements Storage {
    private static final int ALIGN = 64;
    private final ByteBuffer buffer;
    private final long address;

    private HostStorage(ByteBuffer buffer) {
        this.buffer = buffer;
        this.address = addressOf(buffer);
    }

    /** Zero-filled storage of the given size (at most 2 GiB per block). */
    public static HostStorage allocate(long bytes) {
        if (bytes > Integer.MAX_VALUE - ALIGN) {
            throw new IllegalArgumentException("host block of " + bytes + " bytes exceeds the 2 GiB limit of one buffer");
        }
        // alignedSlice rounds capacity down to the alignment: over-allocate by one rounded-up block
        long rounded = (bytes + ALIGN - 1) / ALIGN * ALIGN;
        ByteBuffer raw = ByteBuffer.allocateDirect((int) rounded + ALIGN);
        return new HostStorage(raw.alignedSlice(ALIGN).limit((int) bytes).slice().order(ByteOrder.nativeOrder()));
    }

    /** Wraps an existing direct buffer (for example a memory-mapped file region). */
    public static HostStorage wrap(ByteBuffer direct) {
        if (!direct.isDirect()) {
            throw new IllegalArgumentException("host storage needs a direct buffer");
        }
        return new HostStorage(direct.slice().order(ByteOrder.nativeOrder()));
    }

    @Override
    public long address() {
        return address;
    }

    @Override
    public long byteSize() {
        return buffer.capacity();
    }

    @Override
    public boolean isHost() {
        return true;
    }

    @Override
    public ByteBuffer hostBuffer() {
        return buffer.duplicate().order(ByteOrder.nativeOrder());
    }

    private static long addressOf(ByteBuffer b) {
        // JavaCPP reads the address of a direct buffer without reflection on JDK internals.
        return new org.bytedeco.javacpp.Pointer(b).address();
    }

}
