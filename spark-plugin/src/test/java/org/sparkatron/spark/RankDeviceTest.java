package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;
import org.sparkatron.device.cuda.CudaRuntime;

/** Which device a barrier task runs on, from its GPU addresses and CUDA's availability (no Spark, no CUDA). */
class RankDeviceTest {
    static final CudaRuntime.Availability TWO_GPUS = new CudaRuntime.Availability(true, 2, false, "CUDA driver and libraries found");
    static final CudaRuntime.Availability NONE =
            new CudaRuntime.Availability(false, 0, false, "cuda unavailable: missing libcuda.so.1 (CUDA driver)");

    @Test
    void aTaskWithoutAGpuRunsOnTheCpu() {
        RankDevice.Choice c = RankDevice.choose(new String[0], null);
        assertFalse(c.cuda());
        assertEquals("cpu", c.description());
    }

    @Test
    void aTaskGivenAGpuUsesThatCudaDevice() {
        RankDevice.Choice c = RankDevice.choose(new String[] {"1"}, TWO_GPUS);
        assertTrue(c.cuda());
        assertEquals(1, c.cudaOrdinal());
        assertEquals("gpu:1; compute: cuda:1", c.description());
    }

    @Test
    void aGpuWithoutUsableCudaFallsBackToTheCpuSayingWhy() {
        assertEquals("gpu:0; compute: cpu (cuda unavailable: missing libcuda.so.1 (CUDA driver))",
                RankDevice.choose(new String[] {"0"}, NONE).description());
        RankDevice.Choice outside = RankDevice.choose(new String[] {"3"}, TWO_GPUS);
        assertFalse(outside.cuda());
        assertTrue(outside.description().contains("GPU address 3 but this executor sees 2 CUDA device(s)"), outside.description());
        assertTrue(RankDevice.choose(new String[] {"a"}, TWO_GPUS).description().contains("not a CUDA device index"));
    }
}
