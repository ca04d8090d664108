package org.sparkatron.device.cuda;

import java.util.HashMap;
import java.util.Map;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.JCudaDriver;

/**
 * The process-wide part of CUDA: {@code cuInit} once, and one retained primary context per device, shared
 * by every rank of the process that uses that device (the driver's primary context is per process anyway).
 * Ranks make it current on each thread that touches the device ({@link #makeCurrent(int)}).
 *
 * <p>Thread-safe. Touching this class loads JCuda: only {@link CudaRuntime} and classes created after its
 * probe succeeded do.
 */
final class CudaDriver {
    private static final Map<Integer, CUcontext> CONTEXTS = new HashMap<>();
    private static boolean initialized;
    private static int deviceCount;

    private CudaDriver() {
    }

    /** cuInit (once) and the number of devices. */
    static synchronized int initialize() {
        if (!initialized) {
            JCudaDriver.setExceptionsEnabled(false);
            Cu.check(JCudaDriver.cuInit(0), "cuInit");
            int[] n = new int[1];
            Cu.check(JCudaDriver.cuDeviceGetCount(n), "cuDeviceGetCount");
            deviceCount = n[0];
            initialized = true;
        }
        return deviceCount;
    }

    /** The primary context of {@code ordinal}, retained on first use (for the life of the process). */
    static synchronized CUcontext context(int ordinal) {
        initialize();
        if (ordinal < 0 || ordinal >= deviceCount) {
            throw new CudaException("CUDA device " + ordinal + " does not exist (this process sees " + deviceCount + ")");
        }
        return CONTEXTS.computeIfAbsent(ordinal, o -> {
            CUdevice dev = new CUdevice();
            Cu.check(JCudaDriver.cuDeviceGet(dev, o), "cuDeviceGet(" + o + ")");
            CUcontext ctx = new CUcontext();
            Cu.check(JCudaDriver.cuDevicePrimaryCtxRetain(ctx, dev), "cuDevicePrimaryCtxRetain(" + o + ")");
            return ctx;
        });
    }

    /** Makes device {@code ordinal}'s primary context current on the calling thread (cheap; call on entry). */
    static void makeCurrent(int ordinal) {
        Cu.check(JCudaDriver.cuCtxSetCurrent(context(ordinal)), "cuCtxSetCurrent(" + ordinal + ")");
    }

    /** The compute capability as major * 10 + minor (90 for sm_90). */
    static int computeCapability(int ordinal) {
        context(ordinal);
        CUdevice dev = new CUdevice();
        Cu.check(JCudaDriver.cuDeviceGet(dev, ordinal), "cuDeviceGet");
        int[] major = new int[1], minor = new int[1];
        Cu.check(JCudaDriver.cuDeviceGetAttribute(major, jcuda.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute");
        Cu.check(JCudaDriver.cuDeviceGetAttribute(minor, jcuda.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute");
        return 10 * major[0] + minor[0];
    }

    /** The device's name, compute capability and memory, e.g. "NVIDIA H200 (sm_90, 139.8 GiB)". */
    static String describe(int ordinal) {
        context(ordinal);
        CUdevice dev = new CUdevice();
        Cu.check(JCudaDriver.cuDeviceGet(dev, ordinal), "cuDeviceGet");
        byte[] name = new byte[256];
        Cu.check(JCudaDriver.cuDeviceGetName(name, name.length, dev), "cuDeviceGetName");
        int[] major = new int[1], minor = new int[1];
        Cu.check(JCudaDriver.cuDeviceGetAttribute(major, jcuda.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute");
        Cu.check(JCudaDriver.cuDeviceGetAttribute(minor, jcuda.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute");
        long[] total = new long[1];
        Cu.check(JCudaDriver.cuDeviceTotalMem(total, dev), "cuDeviceTotalMem");
        int len = 0;
        while (len < name.length && name[len] != 0) {
            len++;
        }
        return String.format(java.util.Locale.ROOT, "%s (sm_%d%d, %.1f GiB)", new String(name, 0, len, java.nio.charset.StandardCharsets.UTF_8),
                major[0], minor[0], total[0] / 1073741824.0);
    }
}
