package org.sparkatron.device.cpu;

/** Every {@link AttentionBlockKernelsTest} case on the scalar loops (a JVM without the Vector API module). */
class ScalarAttentionBlockKernelsTest extends AttentionBlockKernelsTest {
    @Override
    CpuKernels create() {
        return new CpuKernels(false);
    }
}
