package org.sparkatron.device.cuda;

import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUresult;
import jcuda.driver.CUstream;

/**
 * Small helpers over JCuda's driver API: error checks naming the call, and raw addresses in and out of
 * JCuda's pointer types (our handles are plain {@code long} addresses; JavaCPP and JCuda meet through them).
 * Loaded only after {@link CudaRuntime} found a usable driver. Stateless and thread-safe.
 */
final class Cu {
    private Cu() {
    }

    /** Throws a {@link CudaException} naming {@code call} unless {@code result} is CUDA_SUCCESS. */
    static void check(int result, String call) {
        if (result != CUresult.CUDA_SUCCESS) {
            throw new CudaException(call + ": " + CUresult.stringFor(result));
        }
    }

    /** A JCuda device pointer for a raw address (owning nothing). */
    static CUdeviceptr ptr(long address) {
        return new CUdeviceptr().withByteOffset(address);
    }

    /** A device pointer JCuda fills (cuMemAlloc), whose raw address we can read. */
    static final class OutPtr extends CUdeviceptr {
        long address() {
            return getNativePointer();
        }
    }

    /** A stream handle whose raw address we can read (to hand it to cuBLASLt and NCCL). */
    static final class Stream extends CUstream {
        long address() {
            return getNativePointer();
        }
    }
}
