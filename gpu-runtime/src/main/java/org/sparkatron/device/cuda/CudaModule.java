package org.sparkatron.device.cuda;

import java.io.IOException;
import java.io.InputStream;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmodule;
import jcuda.driver.JCudaDriver;

/**
 * Our kernels on one device: the fatbin resource built from {@code gpu-runtime/src/main/cuda/*.cu} (sm_80 and
 * sm_90 machine code, compute_90 PTX) loaded with {@code cuModuleLoadData} (JCuda's
 * {@code cuModuleLoadFatBinary} loses the handle), once per device and process; functions are looked up
 * by name on first use and cached.
 *
 * <p>Thread-safe: modules and functions are shared by the ranks of a process that use one device.
 */
final class CudaModule {
    static final String RESOURCE = "/org/sparkatron/device/cuda/sparkatron_kernels.fatbin";
    private static final Map<Integer, CudaModule> MODULES = new HashMap<>();

    private final int ordinal;
    private final CUmodule module;
    private final Map<String, CUfunction> functions = new ConcurrentHashMap<>();

    private CudaModule(int ordinal, CUmodule module) {
        this.ordinal = ordinal;
        this.module = module;
    }

    /** Null when the kernels are built into this jar, else why they are not. */
    static String missingReason() {
        return CudaModule.class.getResource(RESOURCE) != null ? null
                : "the CUDA kernels are not built into this jar (nvcc was not found at build time: run "
                        + "gpu-runtime/src/main/cuda/install-nvcc.sh, then rebuild)";
    }

    /** The module on device {@code ordinal} (whose context must be current on the calling thread). */
    static synchronized CudaModule forDevice(int ordinal) {
        CudaModule m = MODULES.get(ordinal);
        if (m == null) {
            String missing = missingReason();
            if (missing != null) {
                throw new CudaException(missing);
            }
            byte[] image;
            try (InputStream in = CudaModule.class.getResourceAsStream(RESOURCE)) {
                image = in.readAllBytes();
            } catch (IOException e) {
                throw new CudaException("cannot read " + RESOURCE + ": " + e.getMessage(), e);
            }
            CUmodule mod = new CUmodule();
            Cu.check(JCudaDriver.cuModuleLoadData(mod, image), "cuModuleLoadData(" + RESOURCE + ", " + image.length + " bytes)");
            m = new CudaModule(ordinal, mod);
            MODULES.put(ordinal, m);
        }
        return m;
    }

    /** The kernel {@code name} (an {@code extern "C" __global__} function of the .cu files). */
    CUfunction function(String name) {
        CUfunction f = functions.get(name);
        if (f == null) {
            f = new CUfunction();
            int r = JCudaDriver.cuModuleGetFunction(f, module, name);
            if (r != jcuda.driver.CUresult.CUDA_SUCCESS) {
                throw new CudaException("cuModuleGetFunction(" + name + ") on device " + ordinal + ": "
                        + jcuda.driver.CUresult.stringFor(r) + " (no such kernel in the fatbin)");
            }
            functions.put(name, f);
        }
        return f;
    }
}
