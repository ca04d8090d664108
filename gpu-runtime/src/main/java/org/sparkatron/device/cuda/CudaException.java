package org.sparkatron.device.cuda;

/**
 * A CUDA driver, cuBLASLt or NCCL call failed, or the CUDA device found a problem a kernel recorded (an
 * out-of-range target id). The message names the call and the error, e.g.
 * {@code "cuMemAlloc(1048576 bytes): CUDA_ERROR_OUT_OF_MEMORY"}.
 */
public final class CudaException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public CudaException(String message) {
        super(message);
    }

    public CudaException(String message, Throwable cause) {
        super(message, cause);
    }
}
