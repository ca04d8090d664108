package org.sparkatron.device.cuda;

import java.util.Map;
import org.sparkatron.device.GpuProbe;

/**
 * Whether this process can use CUDA, decided once: the {@link GpuProbe} must find the driver, cuBLAS,
 * cuBLASLt and a GPU device node (or the emulated CUDA must be requested, {@code SPARKATRON_CUDA_EMU_KERNELS}
 * set, as the test build does), then JCuda's driver binding must load and {@code cuInit} succeed. Until
 * then no JCuda or JavaCPP CUDA class is loaded, and every failure to load one ({@link LinkageError}) is
 * caught and becomes the reason CUDA is unavailable: a machine without CUDA runs on the CPU device.
 *
 * <p>Thread-safe; the first call may take a second (native library extraction, cuInit).
 */
public final class CudaRuntime {
    /** The probe's outcome: usable, how many devices, and why not when not. */
    public record Availability(boolean available, int deviceCount, boolean emulated, String reason) {
    }

    private static Availability cached;

    private CudaRuntime() {
    }

    /** True when the emulated CUDA is requested by the environment (tests). */
    public static boolean emulationRequested() {
        return System.getenv("SPARKATRON_CUDA_EMU_KERNELS") != null;
    }

    /** Probes once per process; later calls return the first answer. */
    public static synchronized Availability availability() {
        if (cached == null) {
            cached = probe(System.getenv());
        }
        return cached;
    }

    /** One line per device ("cuda:0 NVIDIA H200 (sm_90, 139.8 GiB)"), or why CUDA is unavailable. */
    public static String describe() {
        Availability a = availability();
        if (!a.available()) {
            return "cuda runtime: unavailable (" + a.reason() + ")";
        }
        StringBuilder sb = new StringBuilder("cuda runtime: " + a.deviceCount() + " device(s)" + (a.emulated() ? ", emulated" : ""));
        for (int i = 0; i < a.deviceCount(); i++) {
            sb.append(System.lineSeparator()).append("  cuda:").append(i).append(' ').append(CudaDriver.describe(i));
        }
        return sb.toString();
    }

    private static Availability probe(Map<String, String> env) {
        boolean emulated = env.get("SPARKATRON_CUDA_EMU_KERNELS") != null;
        if (emulated && !java.nio.file.Files.exists(java.nio.file.Path.of(env.get("SPARKATRON_CUDA_EMU_KERNELS")))) {
            return new Availability(false, 0, true, "the emulated CUDA is not built (" + env.get("SPARKATRON_CUDA_EMU_KERNELS")
                    + " is missing: cuda-emulation/build.sh needs g++, nm and unzip)");
        }
        if (!emulated) {
            GpuProbe.Report report = GpuProbe.system().probe();
            if (!report.cudaStackPresent()) {
                return new Availability(false, 0, false, report.reason());
            }
        }
        try {
            int devices = CudaDriver.initialize();
            if (devices == 0) {
                return new Availability(false, 0, emulated, "cuInit succeeded but the driver reports no CUDA device");
            }
            String kernels = CudaModule.missingReason();
            if (kernels != null) {
                return new Availability(false, devices, emulated, kernels);
            }
            return new Availability(true, devices, emulated, emulated ? "emulated CUDA (tests)" : "CUDA driver and libraries found");
        } catch (LinkageError e) {
            return new Availability(false, 0, emulated, "the CUDA driver binding did not load: " + e);
        } catch (CudaException e) {
            return new Availability(false, 0, emulated, e.getMessage());
        }
    }
}
