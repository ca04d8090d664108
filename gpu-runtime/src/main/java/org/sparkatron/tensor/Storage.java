package org.sparkatron.tensor;

import java.nio.ByteBuffer;

/**
 * A block of memory on one device, addressed in 64 bits. Host-addressable storage (the CPU device's
 * memory, host staging buffers, memory-mapped files) hands out native-order direct buffers over windows
 * of at most 2 GiB; device storage (CUDA) holds only an address. Whoever allocated a storage owns it:
 * a {@code Device} returns it to its allocator, host blocks are freed when unreachable.
 */
public interface Storage {
    /** Raw address of the first byte. */
    long address();

    long byteSize();

    /** Whether the host can address this memory at all (CPU device memory, host buffers). */
    boolean isHost();

    /**
     * Bytes {@code [offset, offset + length)} as a native-order direct buffer sharing this memory. Throws
     * for device memory, and for strict CPU device memory outside a kernel or device copy
     * ({@code org.sparkatron.device.HostAccess}).
     */
    ByteBuffer hostBuffer(long offset, int length);

    /** The whole block (at most 2 GiB) as a native-order direct buffer; see {@link #hostBuffer(long, int)}. */
    default ByteBuffer hostBuffer() {
        if (byteSize() > Integer.MAX_VALUE) {
            throw new IllegalStateException("a storage of " + byteSize() + " bytes is larger than one buffer (2 GiB): use a window");
        }
        return hostBuffer(0, (int) byteSize());
    }
}
