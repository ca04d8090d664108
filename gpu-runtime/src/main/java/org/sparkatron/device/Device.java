package org.sparkatron.device;

import java.nio.ByteBuffer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One rank's compute device: it owns the rank's memory and orders the rank's work on it. Implementations:
 * {@link org.sparkatron.device.cpu.CpuDevice} (host memory, OpenBLAS and Java kernels; and its strict
 * variant for tests), and the CUDA device.
 *
 * <h2>Stream order</h2>
 * The kernels ({@link #kernels()}), device copies and communicator operations of one rank execute in the
 * order the rank's thread issues them, as if on one stream: a kernel sees the results of every call issued
 * before it. A call may return before its work is done. The host sees results only after a
 * synchronisation: {@link #synchronize()}, or a call that says it synchronises ({@link #download},
 * {@link #toHost}). A training step synchronises once, when it reads its loss, gradient norm and overflow
 * flag together; nothing else in model, parallel, optimizer, precision or training code reads or writes
 * device memory from Java. The CPU device runs every call to completion before returning, which satisfies
 * the contract trivially; the strict CPU device also refuses every host access outside device work
 * ({@link HostAccess}), so code that breaks the contract fails in tests.
 *
 * <h2>Memory</h2>
 * {@link #allocate} takes blocks from a caching allocator: a released block returns to the device's cache
 * and is handed out again for a request of (about) its size, so after the first training step a step
 * obtains nothing from the system ({@link #systemAllocations()} does not move). Fresh memory is undefined
 * (zero it with {@link Kernels#zero}); the strict device fills it with NaN bytes to catch reads of
 * uninitialised memory. Sizes are 64-bit; a request the device cannot hold fails with
 * {@link DeviceMemoryException} naming the bytes asked and the bytes available.
 *
 * <h2>Threading and failure</h2>
 * A device belongs to one rank: one thread issues its work (a communicator may use its own threads for
 * the transfers it was handed). Device errors are unchecked exceptions naming the call. {@link #close()}
 * releases all of the device's memory; tensors from it must not be used afterwards.
 */
public interface Device extends AutoCloseable {
    /** e.g. "cpu", "cpu-strict", "cuda:0". */
    String name();

    /** This device's kernels (one instance per device; it owns the device's kernel scratch). */
    Kernels kernels();

    /** A tensor in a fresh or cached block of device memory; contents undefined. */
    Tensor allocate(MemoryKind kind, DType dtype, long... shape);

    /** {@link #allocate(MemoryKind, DType, long...)} with int dimensions. */
    default Tensor allocate(MemoryKind kind, DType dtype, int... shape) {
        long[] s = new long[shape.length];
        for (int i = 0; i < s.length; i++) {
            s[i] = shape[i];
        }
        return allocate(kind, dtype, s);
    }

    /** A zero-filled tensor (allocate, then a stream-ordered zero kernel). */
    default Tensor zeros(MemoryKind kind, DType dtype, int... shape) {
        Tensor t = allocate(kind, dtype, shape);
        kernels().zero(t);
        return t;
    }

    /** {@link #zeros(MemoryKind, DType, int...)} with 64-bit dimensions. */
    default Tensor zeros(MemoryKind kind, DType dtype, long... shape) {
        Tensor t = allocate(kind, dtype, shape);
        kernels().zero(t);
        return t;
    }

    /**
     * Returns the block {@code t} (any view of it) was allocated in to the device's cache, once the work
     * issued so far is done with it. Null is ignored. The block's tensors must not be used afterwards.
     */
    void release(Tensor t);

    /** Host memory the device copies from and to fastest (pinned memory on CUDA); the host uses it freely. */
    Tensor allocateHostStaging(DType dtype, long... shape);

    /** {@code dst = src} (device to device, the same byte size, any dtypes), stream-ordered. */
    void copy(Tensor dst, Tensor src);

    /**
     * A strided copy (cudaMemcpy2D): {@code rows} rows of {@code width} elements, row r read from element
     * {@code srcOffset + r * srcPitch} of {@code src} and written at {@code dstOffset + r * dstPitch} of
     * {@code dst}. Both tensors have the same dtype; offsets and pitches count its elements. Stream-ordered.
     */
    void copy2d(Tensor dst, long dstOffset, long dstPitch, Tensor src, long srcOffset, long srcPitch, long rows,
                long width);

    /**
     * Host to device: {@code dst} gets the bytes of {@code src} from its position to its limit (exactly
     * {@code dst.byteSize()} of them). Stream-ordered; when it returns the device has taken {@code src}'s
     * bytes (staged them if needed), so the caller may reuse the buffer at once.
     */
    void upload(Tensor dst, ByteBuffer src);

    /**
     * Device to host: waits for all work issued so far (a synchronisation, counted as one), then writes
     * {@code src}'s bytes into {@code dst} from its position (which does not move).
     */
    void download(ByteBuffer dst, Tensor src);

    /**
     * Synchronises, then returns {@code t}'s contents as a host tensor of the same dtype and shape: a view
     * of the same memory where the host may read it (the CPU device), else a fresh host copy. Writes
     * to the result reach {@code t} only through {@link #fromHost}. For checkpoints and tools, not steps.
     */
    Tensor toHost(Tensor t);

    /** {@code dst = host} (same byte size); nothing to do when {@code host} is {@code dst}'s own memory. */
    void fromHost(Tensor dst, Tensor host);

    /** Waits until all work issued so far is done. Counted in {@link #synchronizations()}. */
    void synchronize();

    /** Memory figures now. */
    MemoryStats memory();

    /** Restarts {@link MemoryStats#peakInUse()} (and the per-kind peaks) from the current figures. */
    void resetPeakMemory();

    /** Host synchronisations so far (explicit and implied by {@link #download} / {@link #toHost}). */
    long synchronizations();

    /** Blocks obtained from the system so far (cache misses of the allocator). */
    long systemAllocations();

    /**
     * The dtype this device keeps values of the reduced format {@code format} (BF16, F16, FP8_E4M3, FP8_E5M2) in:
     * the format itself, or F32 holding values exactly representable in it where the device emulates the
     * format (the CPU device emulates all of them).
     */
    default DType storageOf(DType format) {
        return format;
    }

    /** Why this device cannot run FP8 GEMMs (a GPU older than sm_89), or null when it can. */
    default String fp8Unsupported() {
        return null;
    }

    /** The memory this device can hold in all, in bytes (for up-front refusals of what cannot fit). */
    long capacityBytes();

    /** Releases all memory. Idempotent. */
    @Override
    void close();

    /**
     * Where communicator operations can run asynchronously to this rank's compute (Megatron's overlapped
     * gradient reduction and parameter gather), or null when the device has none: the CPU device finishes
     * every call before returning, so its callers overlap with a thread of their own. On a GPU this is a
     * second communication stream, ordered against the compute stream by events.
     */
    default CommunicationQueue communicationQueue() {
        return null;
    }

    /**
     * An ordered queue of communicator work beside the compute stream. One rank's thread issues to it (the
     * issuing itself returns at once); operations run in issue order. A failed operation surfaces as the
     * communicator's exception at the device's next {@link #synchronize()} (or its next operation).
     */
    interface CommunicationQueue {
        /**
         * Issues {@code op} (calls on communicators, which queue their collectives here while it runs) after
         * all device work issued so far; the compute issued afterwards does not wait for it.
         */
        Issued issue(Runnable op);

        /** An issued operation. */
        interface Issued {
            /** Orders the compute issued from now on after the operation; never blocks the host. Call once. */
            void orderCompute();
        }
    }
}
