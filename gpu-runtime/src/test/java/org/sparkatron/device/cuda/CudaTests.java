package org.sparkatron.device.cuda;

import static org.sparkatron.device.cpu.Arrays32.read;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.junit.jupiter.api.Assumptions;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.precision.HalfFloats;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Shared by the CUDA tests (JUnit tag "cuda"): the device, or a skip that says why CUDA is unavailable
 * (printed, so a skipped run is visible in the build log), and host <-> device helpers. The Maven build
 * runs these tests against the emulated CUDA (cuda-emulation/); {@code ./sparkatron gpu-check} runs them on
 * a real GPU.
 */
final class CudaTests {
    private CudaTests() {
    }

    /** A device on CUDA ordinal {@code ordinal}, or an aborted (skipped) test naming the reason. */
    static CudaDevice deviceOrSkip(int ordinal) {
        CudaRuntime.Availability a = CudaRuntime.availability();
        if (!a.available()) {
            System.err.println("CUDA tests SKIPPED: " + a.reason());
        }
        Assumptions.assumeTrue(a.available(), () -> "CUDA unavailable: " + a.reason());
        Assumptions.assumeTrue(ordinal < a.deviceCount(), () -> "needs " + (ordinal + 1) + " CUDA devices, found " + a.deviceCount());
        return new CudaDevice(ordinal);
    }

    /** A device copy of a host tensor (queued). */
    static Tensor up(CudaDevice dev, Tensor host) {
        Tensor d = dev.allocate(MemoryKind.WORKSPACE, host.dtype(), host.shape());
        dev.upload(d, host.hostBuffer());
        return d;
    }

    /** A device tensor's F32 values (synchronises). */
    static double[] down(CudaDevice dev, Tensor d) {
        return read(dev.toHost(d));
    }

    /** A device tensor's BF16 values as doubles (synchronises). */
    static double[] downBf16(CudaDevice dev, Tensor d) {
        ByteBuffer b = ByteBuffer.allocateDirect((int) d.byteSize()).order(ByteOrder.nativeOrder());
        dev.download(b, d);
        double[] out = new double[(int) d.numel()];
        for (int i = 0; i < out.length; i++) {
            out[i] = Float.intBitsToFloat((b.getShort(2 * i) & 0xffff) << 16);
        }
        return out;
    }

    /** A host BF16 tensor holding the bf16 roundings of {@code values}. */
    static Tensor bf16(double[] values, int... shape) {
        Tensor t = Tensor.allocateHost(DType.BF16, shape);
        ByteBuffer b = t.hostBuffer();
        for (int i = 0; i < values.length; i++) {
            b.putShort(2 * i, HalfFloats.floatToBf16((float) values[i]));
        }
        return t;
    }

    /** The bf16 rounding of each value. */
    static double[] roundBf16(double[] v) {
        double[] r = new double[v.length];
        for (int i = 0; i < v.length; i++) {
            r[i] = HalfFloats.roundToBf16((float) v[i]);
        }
        return r;
    }
}
