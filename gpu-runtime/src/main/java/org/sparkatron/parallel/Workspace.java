package org.sparkatron.parallel;

import java.util.HashMap;
import java.util.Map;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Transient F32 buffers shared by the layers of one rank's model (e.g. the full-row tensor a
 * sequence-parallel layer gathers into or reduce-scatters from): a buffer lives only within one layer
 * call, so all layers can share it. Buffers are keyed by purpose, grow when a larger shape is asked for
 * and are reused otherwise. One rank, one thread: not thread-safe.
 */
public final class Workspace {
    private final Map<String, Tensor> buffers = new HashMap<>();

    /** A buffer of shape [rows, cols] for {@code key}; its contents are undefined. */
    public Tensor get(String key, int rows, int cols) {
        long need = (long) rows * cols;
        Tensor t = buffers.get(key);
        if (t == null || t.numel() < need) {
            t = Tensor.allocateHost(DType.F32, Math.toIntExact(need));
            buffers.put(key, t);
        }
        return t.slice(0, Math.toIntExact(need)).view(rows, cols);
    }
}
