package org.sparkatron.device;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** The GPU probe finds (or misses) each library by file (never loading one) and names what is missing. */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
class GpuProbeTest {
    @Test
    void emptyDirectoriesReportEverythingMissingAndChooseTheCpu(@TempDir Path dir) throws Exception {
        GpuProbe.Report r = new GpuProbe(List.of(dir), List.of(dir), dir, false).probe();
        assertEquals(GpuProbe.COMPONENTS, r.missing());
        assertFalse(r.cudaStackPresent());
        assertEquals("cpu", r.device());
        assertEquals("cuda unavailable: missing libcuda.so.1 (CUDA driver), libcublas.so.13 (cuBLAS), libcublasLt.so.13 (cuBLASLt), "
                + "/dev/nvidia* (no GPU device node)", r.reason());
        assertTrue(r.describe().contains("libnccl.so.2") && r.describe().contains("MISSING"), r.describe());
    }

    @Test
    void fakeLibraryDirectoryIsFound(@TempDir Path dir) throws Exception {
        Path lib = Files.createDirectories(dir.resolve("lib"));
        Path bin = Files.createDirectories(dir.resolve("bin"));
        Path dev = Files.createDirectories(dir.resolve("dev"));
        for (String f : new String[] {"libcuda.so.1", "libcublas.so.13", "libnccl.so.2"}) {
            Files.createFile(lib.resolve(f)); // empty files: the probe never opens or loads them
        }
        Files.createFile(bin.resolve("nvcc"));
        Files.createFile(dev.resolve("nvidiactl"));
        // cuBLASLt through a symbolic link, as the CUDA toolkit installs it
        Files.createFile(lib.resolve("libcublasLt.so.13.0.1"));
        Files.createSymbolicLink(lib.resolve("libcublasLt.so.13"), lib.resolve("libcublasLt.so.13.0.1"));
        GpuProbe.Report r = new GpuProbe(List.of(dir.resolve("elsewhere"), lib), List.of(bin), dev, false).probe();
        assertEquals(List.of(), r.missing(), r.describe());
        assertEquals(lib.resolve("libcuda.so.1"), r.found().get(GpuProbe.COMPONENTS.get(0)).orElseThrow());
        assertTrue(r.cudaStackPresent());
        assertEquals("cuda", r.device(), "the whole stack is present");
        assertEquals("cuda: the driver, cuBLAS, cuBLASLt and a GPU device node are present", r.reason());

        Files.delete(lib.resolve("libcublas.so.13"));
        GpuProbe.Report partial = new GpuProbe(List.of(lib), List.of(bin), dev, false).probe();
        assertEquals("cuda unavailable: missing libcublas.so.13 (cuBLAS)", partial.reason());
    }

    @Test
    void parsesTheLoaderCacheKeepingOnlyExistingFiles(@TempDir Path dir) throws Exception {
        Path real = Files.createFile(dir.resolve("libnccl.so.2"));
        Map<String, Path> m = GpuProbe.parseLdconfig(List.of(
                "1234 libs found in cache `/etc/ld.so.cache'",
                "\tlibnccl.so.2 (libc6,x86-64) => " + real,
                "\tlibcuda.so.1 (libc6,x86-64) => " + dir.resolve("gone/libcuda.so.1"),
                "garbage line"));
        assertEquals(Map.of("libnccl.so.2", real), m);
    }

    @Test
    void thisMachineIsProbedWithoutError() {
        GpuProbe.Report r = GpuProbe.system().probe();
        assertEquals("cpu", r.device());
        assertTrue(r.reason().startsWith("cuda unavailable"), r.reason());
        if (!Files.exists(Path.of("/dev/nvidiactl"))) { // the CPU build machines: the probe must say so
            assertFalse(r.cudaStackPresent());
            assertTrue(r.reason().contains("/dev/nvidia*"), r.reason());
        }
    }
}
