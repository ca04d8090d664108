package org.sparkatron.device;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The device the engine's test suites run on: the CPU device, or the strict CPU device when the system
 * property {@code sparkatron.test.device} is {@code strict} (the build runs the model, parallel,
 * optimizer, precision and training suites a second time that way; see the gpu-runtime pom), or the CUDA
 * device when it is {@code cuda} (the single-rank suites, a third time, on the emulated CUDA). Tests read
 * and write device tensors only through {@link #read} and {@link #write}, which go through the device's
 * copies, so they pass on the strict device as on a GPU.
 */
public final class TestDevices {
    private TestDevices() {
    }

    /** Which device the suite runs on: "cpu", "strict" or "cuda" (the emulated CUDA in the build, a GPU in gpu-check). */
    public static String kind() {
        return System.getProperty("sparkatron.test.device", "cpu");
    }

    /** A fresh device of the suite's kind; the caller closes it (or leaves it to the test's end). */
    public static Device create() {
        return switch (kind()) {
            case "cpu" -> new CpuDevice();
            case "strict" -> CpuDevice.strict();
            case "cuda" -> cuda();
            default -> throw new IllegalStateException("unknown sparkatron.test.device '" + kind() + "' (cpu, strict or cuda)");
        };
    }

    /** CUDA device 0, or a skipped test naming why CUDA is unavailable (no CUDA class loads on the CPU kinds). */
    private static Device cuda() {
        org.sparkatron.device.cuda.CudaRuntime.Availability a = org.sparkatron.device.cuda.CudaRuntime.availability();
        if (!a.available()) {
            System.err.println("CUDA device suites SKIPPED: " + a.reason());
        }
        org.junit.jupiter.api.Assumptions.assumeTrue(a.available(), () -> "CUDA unavailable: " + a.reason());
        return new org.sparkatron.device.cuda.CudaDevice(0);
    }

    /**
     * True when CUDA runs on a real GPU, not the emulation ({@code ./sparkatron gpu-check}), whatever the suite's
     * kind. Loads the CUDA probe: call it from CUDA tests, or after checking {@link #kind()}.
     */
    public static boolean realGpu() {
        org.sparkatron.device.cuda.CudaRuntime.Availability a = org.sparkatron.device.cuda.CudaRuntime.availability();
        return a.available() && !a.emulated();
    }

    /**
     * The error an FP8 GEMM's accumulation may add to one output on the suite's device, given that output's
     * {@code sum_k |a_k b_k|} (of the dequantised operands). The CPU device and the emulated CUDA accumulate in
     * fp32 or better, inside the tests' own fp32 tolerances: 0 here. Hopper's FP8 tensor cores keep about 14
     * bits in their accumulator (DeepSeek-V3 technical report, section 3.3.2, measured on H800s; cuBLASLt's
     * default split accumulator promotes to fp32 only between chunks of K), so on a real GPU each output may be
     * off by a few units of 2^-14 of its absolute sum: 2^-12 (four units). Seen on the H200: 2^-15.5 of the
     * absolute sum at K = 64, against the 1e-5 of the largest output that fp32 accumulation meets.
     */
    public static double fp8AccumulationSlack(double absSum) {
        return kind().equals("cuda") && realGpu() ? absSum * 0x1p-12 : 0;
    }

    /** A device tensor's F32 contents (synchronises). */
    public static float[] read(Device d, Tensor t) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("read() takes F32 tensors, got " + t);
        }
        ByteBuffer b = ByteBuffer.allocateDirect(Math.toIntExact(t.byteSize())).order(ByteOrder.nativeOrder());
        d.download(b, t);
        float[] out = new float[Math.toIntExact(t.numel())];
        b.asFloatBuffer().get(out);
        return out;
    }

    /** A device tensor's F64 contents (synchronises). */
    public static double[] readDoubles(Device d, Tensor t) {
        ByteBuffer b = ByteBuffer.allocateDirect(Math.toIntExact(t.byteSize())).order(ByteOrder.nativeOrder());
        d.download(b, t);
        double[] out = new double[Math.toIntExact(t.numel())];
        b.asDoubleBuffer().get(out);
        return out;
    }

    /** Uploads {@code values} into an F32 device tensor of the same element count. */
    public static void write(Device d, Tensor t, float[] values) {
        if (values.length != t.numel()) {
            throw new IllegalArgumentException(values.length + " values for " + t);
        }
        ByteBuffer b = ByteBuffer.allocateDirect(4 * values.length).order(ByteOrder.nativeOrder());
        b.asFloatBuffer().put(values);
        d.upload(t, b);
    }

    /** A new F32 device tensor holding {@code values}, shaped {@code shape}. */
    public static Tensor tensor(Device d, float[] values, int... shape) {
        Tensor t = d.allocate(MemoryKind.WORKSPACE, DType.F32, shape);
        write(d, t, values);
        return t;
    }
}
