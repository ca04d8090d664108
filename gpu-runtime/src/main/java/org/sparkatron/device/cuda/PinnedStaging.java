package org.sparkatron.device.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jcuda.Pointer;
import jcuda.driver.CUevent;
import jcuda.driver.CUstream;
import jcuda.driver.JCudaDriver;

/**
 * Host-to-device uploads through pinned (page-locked) host memory: the caller's bytes are copied into one
 * of two pinned chunks and the chunk is copied to the device asynchronously, so uploads run at DMA speed
 * and the caller's buffer is free as soon as {@link #upload} returns. A chunk is reused only after the
 * event recorded behind its previous copy completed, so the host never overwrites bytes in flight.
 *
 * <p>Owned by one {@link CudaDevice} (one rank's thread); not thread-safe.
 */
final class PinnedStaging implements AutoCloseable {
    private final int chunkBytes;
    private final Pointer[] chunks = new Pointer[2];
    private final ByteBuffer[] views = new ByteBuffer[2];
    private final CUevent[] done = new CUevent[2];
    private final boolean[] inFlight = new boolean[2];
    private int next;

    PinnedStaging(int chunkBytes) {
        this.chunkBytes = chunkBytes;
        for (int i = 0; i < 2; i++) {
            chunks[i] = new Pointer();
            Cu.check(JCudaDriver.cuMemAllocHost(chunks[i], chunkBytes), "cuMemAllocHost(" + chunkBytes + " bytes)");
            views[i] = chunks[i].getByteBuffer(0, chunkBytes).order(ByteOrder.nativeOrder());
            done[i] = new CUevent();
            Cu.check(JCudaDriver.cuEventCreate(done[i], jcuda.driver.CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        }
    }

    /** Queues dst[0, src.remaining()) = src's bytes on {@code stream}; src's position does not move. */
    void upload(long dstAddress, ByteBuffer src, CUstream stream) {
        ByteBuffer s = src.duplicate();
        long at = 0;
        while (s.hasRemaining()) {
            int i = next;
            next = 1 - next;
            if (inFlight[i]) {
                Cu.check(JCudaDriver.cuEventSynchronize(done[i]), "cuEventSynchronize(staging)");
            }
            int n = Math.min(chunkBytes, s.remaining());
            ByteBuffer part = s.duplicate();
            part.limit(part.position() + n);
            ByteBuffer v = views[i].duplicate();
            v.clear();
            v.put(part);
            s.position(s.position() + n);
            Cu.check(JCudaDriver.cuMemcpyHtoDAsync(Cu.ptr(dstAddress + at), chunks[i], n, stream),
                    "cuMemcpyHtoDAsync(" + n + " bytes)");
            Cu.check(JCudaDriver.cuEventRecord(done[i], stream), "cuEventRecord(staging)");
            inFlight[i] = true;
            at += n;
        }
    }

    @Override
    public void close() {
        for (int i = 0; i < 2; i++) {
            if (chunks[i] != null) {
                if (inFlight[i]) {
                    JCudaDriver.cuEventSynchronize(done[i]);
                }
                JCudaDriver.cuEventDestroy(done[i]);
                JCudaDriver.cuMemFreeHost(chunks[i]);
                chunks[i] = null;
            }
        }
    }
}
