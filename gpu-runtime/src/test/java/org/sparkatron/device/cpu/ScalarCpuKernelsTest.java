package org.sparkatron.device.cpu;

/** Every {@link CpuKernelsTest} case on the scalar loops (what runs in a JVM without the Vector API module). */
class ScalarCpuKernelsTest extends CpuKernelsTest {
    @Override
    CpuKernels create() {
        return new CpuKernels(false);
    }
}
