package org.sparkatron.device;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The {@link Device} contract on the CPU devices: the strict device refuses host access outside device work
 * and names the caller, fresh strict memory is NaN, copies (flat, strided, host-device) move exactly the
 * bytes they say, downloads count as synchronisations, the caching allocator reuses released blocks and
 * keeps its figures, and a tensor of more than 2 GiB is allocated, filled and checksummed.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class DeviceContractTest {

    @Test
    void strictDeviceRefusesHostAccessOutsideDeviceWorkAndNamesTheCaller() {
        try (CpuDevice d = CpuDevice.strict()) {
            Tensor t = d.allocate(MemoryKind.WORKSPACE, DType.F32, 16);
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> t.floats().get(0));
            assertTrue(e.getMessage().contains("cpu-strict") && e.getMessage().contains(DeviceContractTest.class.getName()),
                    e.getMessage());
            d.kernels().fill(t, 3f); // kernels may
            Tensor host = d.toHost(t);
            assertTrue(host.address() != t.address(), "the strict device copies to the host");
            assertEquals(3f, host.floats().get(15)); // a host copy may be read freely
            try (HostAccess.Scope s = HostAccess.enter()) {
                assertEquals(3f, t.floats().get(0)); // inside device work it may be touched
            }
            assertThrows(IllegalStateException.class, t::hostBuffer, "the scope has closed");
        }
    }

    @Test
    void strictFreshMemoryIsNaNAndNormalMemoryIsHostReadable() {
        try (CpuDevice strict = CpuDevice.strict(); CpuDevice cpu = new CpuDevice()) {
            Tensor s = strict.allocate(MemoryKind.ACTIVATIONS, DType.F32, 5);
            for (float v : TestDevices.read(strict, s)) {
                assertTrue(Float.isNaN(v), "uninitialised strict memory reads as NaN");
            }
            Tensor c = cpu.zeros(MemoryKind.ACTIVATIONS, DType.F32, 5);
            assertSame(c, cpu.toHost(c), "the CPU device hands its own memory to the host: no copy");
            assertEquals(0f, c.floats().get(4));
        }
    }

    @Test
    void copiesMoveExactlyTheBytesTheySay() {
        for (Device d : new Device[] {new CpuDevice(), CpuDevice.strict()}) {
            float[] v = new float[24];
            for (int i = 0; i < v.length; i++) {
                v[i] = i;
            }
            Tensor a = TestDevices.tensor(d, v, 4, 6);
            Tensor b = d.zeros(MemoryKind.WORKSPACE, DType.F32, 4, 6);
            d.copy(b, a);
            assertArrayEquals(v, TestDevices.read(d, b), d.name() + ": flat copy");
            // columns 2..4 of the 4 rows of a [4, 6] into columns 0..2 of a [4, 3]
            Tensor cols = d.zeros(MemoryKind.WORKSPACE, DType.F32, 4, 3);
            d.copy2d(cols, 0, 3, a, 2, 6, 4, 3);
            assertArrayEquals(new float[] {2, 3, 4, 8, 9, 10, 14, 15, 16, 20, 21, 22}, TestDevices.read(d, cols),
                    d.name() + ": strided copy");
            assertThrows(IndexOutOfBoundsException.class, () -> d.copy2d(cols, 0, 3, a, 4, 6, 4, 3), "past the source's end");
            long syncs = d.synchronizations();
            ByteBuffer host = ByteBuffer.allocateDirect(4 * 24).order(ByteOrder.nativeOrder());
            d.download(host, a);
            assertEquals(syncs + 1, d.synchronizations(), d.name() + ": a download synchronises");
            assertEquals(23f, host.asFloatBuffer().get(23));
            d.close();
        }
    }

    @Test
    void cachingAllocatorReusesReleasedBlocksAndKeepsItsFigures() {
        try (CpuDevice d = new CpuDevice()) {
            Tensor a = d.allocate(MemoryKind.ACTIVATIONS, DType.F32, 1000);
            Tensor w = d.allocate(MemoryKind.PARAMETERS, DType.F32, 3 << 20); // 12 MiB: a 2 MiB-multiple class
            long system = d.systemAllocations();
            MemoryStats s = d.memory();
            assertEquals(4000, s.requested(MemoryKind.ACTIVATIONS));
            assertEquals(4096, s.inUse(MemoryKind.ACTIVATIONS), "rounded to 512 bytes");
            assertEquals(12L << 20, s.inUse(MemoryKind.PARAMETERS));
            d.release(a);
            Tensor again = d.allocate(MemoryKind.WORKSPACE, DType.F32, 900); // same size class
            assertEquals(a.address(), again.address(), "a released block is handed out again");
            assertEquals(system, d.systemAllocations(), "from the cache, not the system");
            assertEquals(0, d.memory().inUse(MemoryKind.ACTIVATIONS));
            assertEquals(4096 + (12L << 20), d.memory().peakInUse());
            IllegalStateException twice = assertThrows(IllegalStateException.class, () -> d.release(a), "released twice");
            assertTrue(twice.getMessage().contains("released twice"), twice.getMessage());
            Tensor third = d.allocate(MemoryKind.WORKSPACE, DType.F32, 900);
            assertTrue(third.address() != again.address(), "the live tensor's block was not handed out again");
            d.release(w);
            d.resetPeakMemory();
            assertEquals(2 * 4096, d.memory().peakInUse());
            assertEquals(2 * 4096 + (12L << 20), d.memory().reserved(), "released blocks stay reserved in the cache");
            d.release(again);
            assertThrows(IllegalStateException.class, () -> again.floats().get(0), "use after release");
        }
    }

    @Test
    void aRequestPastTheCapacityIsRefusedWithTheBytes() {
        try (CpuDevice d = new CpuDevice()) {
            long tooMuch = d.capacityBytes() + 1;
            DeviceMemoryException e = assertThrows(DeviceMemoryException.class,
                    () -> d.allocate(MemoryKind.PARAMETERS, DType.F32, tooMuch / 4 + 1));
            assertTrue(e.getMessage().contains("available"), e.getMessage());
        }
    }

    /** More than 2^31 bytes in one tensor: allocated, filled by a kernel, summed, and windows read back. */
    @Test
    void aTensorOfMoreThanTwoGibibytesIsFilledAndChecksummed() {
        long n = (5L << 30) / 8; // 2.5 GiB of F32
        try (CpuDevice d = new CpuDevice()) {
            Tensor big = d.allocate(MemoryKind.WORKSPACE, DType.F32, n);
            assertTrue(big.byteSize() > Integer.MAX_VALUE);
            d.kernels().fill(big, 1.5f);
            d.kernels().scale(big.slice(n - 4, 4), 2f); // the last elements, past 2 GiB
            Tensor acc = d.zeros(MemoryKind.WORKSPACE, DType.F64, 1);
            d.kernels().sumOfSquares(big, acc, 0);
            double want = (n - 4) * 2.25 + 4 * 9.0;
            assertEquals(want, TestDevices.readDoubles(d, acc)[0], 0.0, "2.25 and 9 are exact, so is their sum");
            assertArrayEquals(new float[] {1.5f, 3f, 3f, 3f, 3f}, TestDevices.read(d, big.slice(n - 5, 5)));
        }
    }
}
