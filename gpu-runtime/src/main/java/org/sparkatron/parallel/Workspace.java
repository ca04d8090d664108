package org.sparkatron.parallel;

import java.util.HashMap;
import java.util.Map;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Transient F32 buffers on the rank's device shared by the layers of one model (e.g. the full-row tensor
 * a sequence-parallel layer gathers into or reduce-scatters from): a buffer lives only within one layer
 * call, so all layers can share it. Buffers are keyed by purpose, grow when a larger shape is asked for
 * (the smaller block goes back to the device) and are reused otherwise, so a step allocates nothing after
 * the first. One rank, one thread: not thread-safe.
 */
public final class Workspace {
    private final Device device;
    private final Map<String, Tensor> buffers = new HashMap<>();

    public Workspace(Device device) {
        this.device = device;
    }

    /** A buffer of shape [rows, cols] for {@code key}; its contents are undefined. */
    public Tensor get(String key, int rows, int cols) {
        long need = (long) rows * cols;
        Tensor t = buffers.get(key);
        if (t == null || t.numel() < need) {
            device.release(t);
            t = device.allocate(MemoryKind.WORKSPACE, DType.F32, need);
            buffers.put(key, t);
        }
        return t.slice(0, need).view(rows, cols);
    }

    /** Returns every buffer to the device. */
    public void close() {
        buffers.values().forEach(device::release);
        buffers.clear();
    }
}
