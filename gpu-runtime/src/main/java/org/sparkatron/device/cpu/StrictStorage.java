package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import org.sparkatron.device.HostAccess;
import org.sparkatron.tensor.HostStorage;
import org.sparkatron.tensor.Storage;

/**
 * Memory of the strict CPU device: host memory that hands out buffers only inside device work
 * ({@link HostAccess}). Any other access throws, naming the first caller outside the tensor and device
 * packages, so a test points at the line that would read GPU memory from the host.
 */
final class StrictStorage implements Storage {
    private static final StackWalker WALKER = StackWalker.getInstance();
    private final HostStorage host;
    private final String device;

    StrictStorage(HostStorage host, String device) {
        this.host = host;
        this.device = device;
    }

    HostStorage host() {
        return host;
    }

    @Override
    public long address() {
        return host.address();
    }

    @Override
    public long byteSize() {
        return host.byteSize();
    }

    @Override
    public boolean isHost() {
        return true;
    }

    @Override
    public ByteBuffer hostBuffer(long offset, int length) {
        if (!HostAccess.allowed()) {
            throw new IllegalStateException("host access to " + device + " memory outside a kernel, device copy or "
                    + "communicator operation, from " + caller() + ": read device tensors with Device.download or toHost "
                    + "after a synchronisation, and change them with kernels");
        }
        return host.hostBuffer(offset, length);
    }

    private static String caller() {
        return WALKER.walk(frames -> frames
                .filter(f -> !f.getClassName().startsWith("org.sparkatron.tensor.")
                        && !f.getClassName().startsWith("org.sparkatron.device.cpu.StrictStorage")
                        && !f.getClassName().startsWith("org.sparkatron.device.cpu.Lease"))
                .findFirst().map(StackWalker.StackFrame::toString).orElse("?"));
    }
}
