package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import org.sparkatron.tensor.Storage;

/**
 * One allocation of a {@link CpuDevice} block: the storage the allocated tensor (and its views) hold. The
 * block goes back to the allocator's cache on release and may be handed out again under a new lease, so a
 * released lease refuses further use: releasing twice, or reading through a tensor after its release, is an
 * error naming the device instead of silently sharing memory with the block's next owner.
 */
final class Lease implements Storage {
    final String device;
    private final Storage block;
    private volatile boolean released;

    Lease(Storage block, String device) {
        this.block = block;
        this.device = device;
    }

    /** Marks this lease released and returns its block for the allocator. */
    Storage release() {
        if (released) {
            throw new IllegalStateException(device + ": a block released twice (a tensor released after its memory "
                    + "went back to the device)");
        }
        released = true;
        return block;
    }

    @Override
    public long address() {
        return block.address();
    }

    @Override
    public long byteSize() {
        return block.byteSize();
    }

    @Override
    public boolean isHost() {
        return true;
    }

    @Override
    public ByteBuffer hostBuffer(long offset, int length) {
        if (released) {
            throw new IllegalStateException(device + ": use of a tensor after its memory was released");
        }
        return block.hostBuffer(offset, length);
    }
}
