package org.sparkatron.device.cuda;

import java.nio.ByteBuffer;
import org.sparkatron.tensor.Storage;

/**
 * A block of CUDA device memory: an address and a size. The host cannot address it; the owning
 * {@link CudaDevice} copies to and from it. Immutable.
 */
final class CudaStorage implements Storage {
    private final long address;
    private final long bytes;
    private final String device;

    CudaStorage(long address, long bytes, String device) {
        this.address = address;
        this.bytes = bytes;
        this.device = device;
    }

    @Override
    public long address() {
        return address;
    }

    @Override
    public long byteSize() {
        return bytes;
    }

    @Override
    public boolean isHost() {
        return false;
    }

    @Override
    public ByteBuffer hostBuffer(long offset, int length) {
        throw new IllegalStateException(device + " memory is not host-addressable: copy it with the device's download/toHost");
    }

    @Override
    public String toString() {
        return device + " block of " + bytes + " bytes";
    }
}
