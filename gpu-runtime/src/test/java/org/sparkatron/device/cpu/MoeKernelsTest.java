package org.sparkatron.device.cpu;

import org.sparkatron.device.Kernels;
import org.sparkatron.tensor.Tensor;

/** {@link MoeKernelsContract} on the CPU device's kernels, which take host tensors as they are. */
class MoeKernelsTest extends MoeKernelsContract {
    private final CpuKernels k = new CpuKernels(false);

    @Override
    protected Kernels kernels() {
        return k;
    }

    @Override
    protected Tensor on(Tensor host) {
        return host;
    }

    @Override
    protected Tensor back(Tensor device) {
        return device;
    }
}
