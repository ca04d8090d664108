package org.sparkatron.device.cuda;

import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUresult;
import jcuda.driver.JCudaDriver;

/**
 * A CUDA event recorded on one of a device's streams: whether the work queued before it is done. Used by
 * communicators to follow their operations (completion, timeouts) without blocking the stream.
 *
 * <p>{@link #isDone()} may be called from any thread (a watchdog); {@link #close()} by the owner once.
 */
public final class CudaEvent implements AutoCloseable {
    private final CudaDevice device;
    private final CUevent event = new CUevent();

    CudaEvent(CudaDevice device, Cu.Stream stream) {
        this.device = device;
        device.makeCurrent();
        Cu.check(JCudaDriver.cuEventCreate(event, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        Cu.check(JCudaDriver.cuEventRecord(event, stream), "cuEventRecord");
    }

    /** The driver's event (for stream waits). */
    CUevent handle() {
        return event;
    }

    /** True once the work before the event completed; never blocks. */
    public boolean isDone() {
        device.makeCurrent();
        int r = JCudaDriver.cuEventQuery(event);
        if (r == CUresult.CUDA_ERROR_NOT_READY) {
            return false;
        }
        Cu.check(r, "cuEventQuery");
        return true;
    }

    @Override
    public void close() {
        device.makeCurrent();
        JCudaDriver.cuEventDestroy(event);
    }
}
