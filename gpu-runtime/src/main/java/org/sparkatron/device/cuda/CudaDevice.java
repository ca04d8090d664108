package org.sparkatron.device.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jcuda.Pointer;
import jcuda.driver.CUDA_MEMCPY2D;
import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmemorytype;
import jcuda.driver.JCudaDriver;
import org.sparkatron.device.CachingAllocator;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.MemoryStats;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.HostStorage;
import org.sparkatron.tensor.Tensor;

/**
 * One rank's CUDA device: the device's primary context, a compute stream and two communication streams with
 * events between them (one for communicator calls that compute waits for at once, one for the
 * {@link #communicationQueue() communication queue} whose collectives overlap the compute), a caching allocator over {@code cuMemAlloc}, pinned staging for uploads, our kernels
 * ({@link CudaKernels}) and cuBLASLt.
 *
 * <h2>Stream order</h2>
 * Kernels, copies and (through {@link #beginCommunication()} / {@link #endCommunication()}) communicator
 * operations execute in the order the rank's thread issues them; calls return before the work is done.
 * {@link #synchronize()} waits for everything and then reports what kernels recorded (an out-of-range
 * target id) as an exception; {@link #download} synchronises.
 *
 * <h2>Memory</h2>
 * Requests round up to size classes (512 bytes under 1 MiB, 2 MiB above); released blocks are cached and
 * handed out again, so after a first training step nothing calls {@code cuMemAlloc}. A released block can
 * be reused at once: every later use is queued behind the release on the compute stream. When the driver
 * refuses an allocation, the cache is returned to it and the request retried once; then the failure names
 * the bytes asked for and the bytes free.
 *
 * <p>Threading: one rank's thread issues work; every call makes the context current on the calling
 * thread first, so a device may be handed between threads (not used concurrently). Errors are
 * {@link CudaException}s naming the call.
 */
public final class CudaDevice implements Device {
    private static final ThreadLocal<Integer> CURRENT = new ThreadLocal<>();

    private final int ordinal;
    private final String name;
    private final Cu.Stream compute = new Cu.Stream();
    private final Cu.Stream comm = new Cu.Stream();
    private final Cu.Stream lane = new Cu.Stream(); // the communication queue's: compute waits only when told
    private boolean onLane;                         // issuing a communication-queue operation: communicators use the lane
    private final CUevent computeReady = new CUevent();
    private final CUevent commDone = new CUevent();
    private final CudaModule module;
    private final PinnedStaging staging;
    private final CachingAllocator<CudaStorage> allocator;
    private final long capacity;
    private final long errorFlag;
    private final ByteBuffer errorHost = ByteBuffer.allocateDirect(16).order(ByteOrder.nativeOrder());
    private final CudaKernels kernels;
    private final java.util.List<Runnable> syncChecks = new java.util.concurrent.CopyOnWriteArrayList<>();
    private CublasLt cublasLt;
    private long synchronizations;
    private boolean closed;

    /** The device with CUDA ordinal {@code ordinal} (see {@link CudaRuntime#availability()} first). */
    public CudaDevice(int ordinal) {
        this.ordinal = ordinal;
        this.name = "cuda:" + ordinal;
        makeCurrent();
        Cu.check(JCudaDriver.cuStreamCreate(compute, jcuda.driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate(compute)");
        Cu.check(JCudaDriver.cuStreamCreate(comm, jcuda.driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate(communication)");
        Cu.check(JCudaDriver.cuStreamCreate(lane, jcuda.driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate(communication queue)");
        Cu.check(JCudaDriver.cuEventCreate(computeReady, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        Cu.check(JCudaDriver.cuEventCreate(commDone, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        this.module = CudaModule.forDevice(ordinal);
        long[] free = new long[1], total = new long[1];
        Cu.check(JCudaDriver.cuMemGetInfo(free, total), "cuMemGetInfo");
        this.capacity = total[0];
        this.allocator = new CachingAllocator<>(name, capacity, new CachingAllocator.Backend<>() {
            @Override
            public CudaStorage allocate(long bytes) {
                return new CudaStorage(fromDriver(bytes), bytes, name);
            }

            @Override
            public void free(CudaStorage block) {
                makeCurrent();
                Cu.check(JCudaDriver.cuMemFree(Cu.ptr(block.address())), "cuMemFree");
            }
        });
        this.staging = new PinnedStaging(8 << 20);
        this.errorFlag = allocator.allocate(16, MemoryKind.WORKSPACE).address();
        Cu.check(JCudaDriver.cuMemsetD8Async(Cu.ptr(errorFlag), (byte) 0, 16, compute), "cuMemsetD8Async(error flag)");
        this.kernels = new CudaKernels(this);
    }

    /** e.g. "cuda:0". */
    @Override
    public String name() {
        return name;
    }

    /** The CUDA ordinal. */
    public int ordinal() {
        return ordinal;
    }

    /** Name, compute capability and memory of the GPU, e.g. "NVIDIA H200 (sm_90, 139.8 GiB)". */
    public String describe() {
        return CudaDriver.describe(ordinal);
    }

    /**
     * FP8 GEMMs need FP8 tensor cores: compute capability 8.9 (Ada) or newer (Hopper's sm_90 is what
     * Transformer Engine's recipes target). Older GPUs are refused, naming the GPU.
     */
    @Override
    public String fp8Unsupported() {
        int cc = CudaDriver.computeCapability(ordinal);
        return cc >= 89 ? null : "precision fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); " + name + " is "
                + describe() + ": use precision bf16";
    }

    @Override
    public CudaKernels kernels() {
        return kernels;
    }

    /** Makes this device's context current on the calling thread (a no-op when it already is). */
    public void makeCurrent() {
        Integer cur = CURRENT.get();
        if (cur == null || cur != ordinal) {
            CudaDriver.makeCurrent(ordinal);
            CURRENT.set(ordinal);
        }
    }

    // ---- memory ----

    @Override
    public Tensor allocate(MemoryKind kind, DType dtype, long... shape) {
        long bytes = Math.multiplyExact(Tensor.numel(shape), (long) dtype.bytes());
        makeCurrent();
        return new Tensor(allocator.allocate(bytes, kind), 0, dtype, shape);
    }

    /** A workspace tensor (the kernels' scratch). */
    Tensor allocate(DType dtype, long... shape) {
        return allocate(MemoryKind.WORKSPACE, dtype, shape);
    }

    /**
     * Returns {@code t}'s block to the cache (null is ignored). Immediately reusable: every later use of
     * the block is queued behind this point on the compute stream.
     */
    @Override
    public void release(Tensor t) {
        if (t != null) {
            if (!(t.storage() instanceof CudaStorage s)) {
                throw new IllegalArgumentException(name + ": release of " + t + ", which is not this device's memory");
            }
            allocator.release(s);
        }
    }

    /** cuMemAlloc for the allocator; a refusal is an OutOfMemoryError, which makes it empty its cache and retry. */
    private long fromDriver(long size) {
        makeCurrent();
        Cu.OutPtr p = new Cu.OutPtr();
        int r = JCudaDriver.cuMemAlloc(p, size);
        if (r == jcuda.driver.CUresult.CUDA_ERROR_OUT_OF_MEMORY) {
            long[] free = new long[1], total = new long[1];
            JCudaDriver.cuMemGetInfo(free, total);
            throw new OutOfMemoryError(String.format(java.util.Locale.ROOT, "cuMemAlloc(%,d bytes) on %s: CUDA_ERROR_OUT_OF_MEMORY (%,d bytes free of %,d)",
                    size, name, free[0], total[0]));
        }
        Cu.check(r, "cuMemAlloc(" + size + " bytes) on " + name);
        return p.address();
    }

    @Override
    public Tensor allocateHostStaging(DType dtype, long... shape) {
        return new Tensor(HostStorage.allocate(Math.multiplyExact(Tensor.numel(shape), (long) dtype.bytes())), 0, dtype, shape);
    }

    @Override
    public MemoryStats memory() {
        return allocator.stats();
    }

    @Override
    public void resetPeakMemory() {
        allocator.resetPeak();
    }

    @Override
    public long systemAllocations() {
        return allocator.systemAllocations();
    }

    @Override
    public long synchronizations() {
        return synchronizations;
    }

    @Override
    public long capacityBytes() {
        return capacity;
    }

    // ---- copies ----

    /** dst = src, device to device (same byte size), stream-ordered. */
    @Override
    public void copy(Tensor dst, Tensor src) {
        if (dst.byteSize() != src.byteSize()) {
            throw new IllegalArgumentException("copy of " + src.byteSize() + " bytes into " + dst.byteSize());
        }
        makeCurrent();
        if (dst.byteSize() > 0) {
            Cu.check(JCudaDriver.cuMemcpyDtoDAsync(Cu.ptr(dst.address()), Cu.ptr(src.address()), dst.byteSize(), compute),
                    "cuMemcpyDtoDAsync(" + dst.byteSize() + " bytes)");
        }
    }

    /** A strided copy (cudaMemcpy2D semantics, offsets and pitches in elements of the common dtype). */
    @Override
    public void copy2d(Tensor dst, long dstOffset, long dstPitch, Tensor src, long srcOffset, long srcPitch, long rows,
                       long width) {
        if (dst.dtype() != src.dtype()) {
            throw new IllegalArgumentException("copy2d between " + src.dtype() + " and " + dst.dtype());
        }
        if (rows == 0 || width == 0) {
            return;
        }
        long e = dst.dtype().bytes();
        if (srcOffset + (rows - 1) * srcPitch + width > src.numel() || dstOffset + (rows - 1) * dstPitch + width > dst.numel()) {
            throw new IndexOutOfBoundsException("copy2d of " + rows + " x " + width + " outside its tensors");
        }
        makeCurrent();
        CUDA_MEMCPY2D c = new CUDA_MEMCPY2D();
        c.srcMemoryType = CUmemorytype.CU_MEMORYTYPE_DEVICE;
        c.srcDevice = Cu.ptr(src.address() + srcOffset * e);
        c.srcPitch = srcPitch * e;
        c.dstMemoryType = CUmemorytype.CU_MEMORYTYPE_DEVICE;
        c.dstDevice = Cu.ptr(dst.address() + dstOffset * e);
        c.dstPitch = dstPitch * e;
        c.WidthInBytes = width * e;
        c.Height = rows;
        Cu.check(JCudaDriver.cuMemcpy2DAsync(c, compute), "cuMemcpy2DAsync(" + rows + " x " + width * e + " bytes)");
    }

    /** Host to device through pinned staging; src may be reused when this returns. */
    @Override
    public void upload(Tensor dst, ByteBuffer src) {
        if (src.remaining() != dst.byteSize()) {
            throw new IllegalArgumentException("upload of " + src.remaining() + " bytes into a " + dst.byteSize() + "-byte tensor");
        }
        makeCurrent();
        staging.upload(dst.address(), src, compute);
    }

    /** Device to host: synchronises, then writes src's bytes into dst from its position. */
    @Override
    public void download(ByteBuffer dst, Tensor src) {
        if (dst.remaining() < src.byteSize()) {
            throw new IllegalArgumentException("download of " + src.byteSize() + " bytes into " + dst.remaining() + " bytes");
        }
        synchronize();
        if (src.byteSize() > 0) {
            ByteBuffer d = dst.isDirect() ? dst.duplicate() : ByteBuffer.allocateDirect((int) src.byteSize());
            Cu.check(JCudaDriver.cuMemcpyDtoH(Pointer.to(d.slice()), Cu.ptr(src.address()), src.byteSize()),
                    "cuMemcpyDtoH(" + src.byteSize() + " bytes)");
            if (!dst.isDirect()) {
                dst.duplicate().put(d);
            }
        }
    }

    /** Synchronises and returns a host copy of {@code t} (same dtype and shape). */
    @Override
    public Tensor toHost(Tensor t) {
        long[] shape = new long[t.rank()];
        for (int i = 0; i < shape.length; i++) {
            shape[i] = t.size(i);
        }
        Tensor h = Tensor.allocateHost(t.dtype(), shape);
        download(h.hostBuffer(), t);
        return h;
    }

    /** dst = host (same byte size). */
    @Override
    public void fromHost(Tensor dst, Tensor host) {
        if (host.storage() == dst.storage() && host.byteOffset() == dst.byteOffset()) {
            return;
        }
        upload(dst, host.hostBuffer());
    }

    /** Fills all bytes of t with 0, stream-ordered. */
    public void zero(Tensor t) {
        makeCurrent();
        if (t.byteSize() > 0) {
            Cu.check(JCudaDriver.cuMemsetD8Async(Cu.ptr(t.address()), (byte) 0, t.byteSize(), compute),
                    "cuMemsetD8Async(" + t.byteSize() + " bytes)");
        }
    }

    /**
     * Waits until all work issued so far is done, then reports errors kernels recorded (a cross-entropy
     * target outside the vocabulary) as an {@link IllegalArgumentException} naming row and id.
     */
    @Override
    public void synchronize() {
        makeCurrent();
        synchronizations++;
        Cu.check(JCudaDriver.cuStreamSynchronize(lane), "cuStreamSynchronize(communication queue)");
        Cu.check(JCudaDriver.cuStreamSynchronize(comm), "cuStreamSynchronize(communication)");
        Cu.check(JCudaDriver.cuStreamSynchronize(compute), "cuStreamSynchronize(compute)");
        errorHost.clear();
        Cu.check(JCudaDriver.cuMemcpyDtoH(Pointer.to(errorHost), Cu.ptr(errorFlag), 16), "cuMemcpyDtoH(error flag)");
        if (errorHost.getInt(0) != 0) {
            Cu.check(JCudaDriver.cuMemsetD8(Cu.ptr(errorFlag), (byte) 0, 16), "cuMemsetD8(error flag)");
            throw new IllegalArgumentException("target id " + errorHost.getInt(8) + " at row " + errorHost.getInt(4)
                    + " is outside the vocabulary of " + errorHost.getInt(12));
        }
        for (Runnable r : syncChecks) {
            r.run();
        }
    }

    // ---- what kernels, cuBLASLt and communicators use ----

    /** Where kernels record errors for {@link #synchronize()} to report. */
    long errorFlag() {
        return errorFlag;
    }

    Cu.Stream computeStream() {
        return compute;
    }

    /** The raw compute stream handle (for cuBLASLt and NCCL through JavaCPP). */
    long computeStreamAddress() {
        return compute.address();
    }

    /**
     * The raw handle of the stream communicator calls queue on now (for NCCL, between begin/endCommunication):
     * the communication queue's while one of its operations is being issued, else the communication stream.
     */
    public long communicationStreamAddress() {
        return (onLane ? lane : comm).address();
    }

    /** The raw handle of the communication queue's stream. */
    public long communicationQueueStreamAddress() {
        return lane.address();
    }

    /** An event behind everything queued so far on the stream communicator calls queue on now. */
    public CudaEvent recordCommunicationEvent() {
        return new CudaEvent(this, onLane ? lane : comm);
    }

    /**
     * The communication queue: a stream of its own, ordered after the compute issued before each operation
     * by an event; the compute waits for an operation only when {@link CommunicationQueue.Issued#orderCompute} says so. While
     * {@code op} runs, communicator calls on this device queue their collectives there instead of on the
     * communication stream, and the compute does not wait for them. One rank's thread issues.
     */
    @Override
    public CommunicationQueue communicationQueue() {
        return op -> {
            makeCurrent();
            if (onLane) {
                throw new IllegalStateException("communication-queue operations do not nest");
            }
            Cu.check(JCudaDriver.cuEventRecord(computeReady, compute), "cuEventRecord(compute ready)");
            Cu.check(JCudaDriver.cuStreamWaitEvent(lane, computeReady, 0), "cuStreamWaitEvent(communication queue)");
            onLane = true;
            try {
                op.run();
            } finally {
                onLane = false;
            }
            CudaEvent done = new CudaEvent(this, lane);
            return () -> {
                makeCurrent();
                Cu.check(JCudaDriver.cuStreamWaitEvent(compute, done.handle(), 0), "cuStreamWaitEvent(compute after the queue)");
                done.close(); // the wait took the event's state: destroying it now is allowed
            };
        };
    }

    /**
     * Runs {@code check} after every {@link #synchronize()} (a communicator reports its failure there, so
     * results of an aborted operation are never read as valid).
     */
    public void addSynchronizeCheck(Runnable check) {
        syncChecks.add(check);
    }

    /**
     * Orders the communication stream after everything issued on the compute stream so far (inside a
     * communication-queue operation the queue is already ordered so).
     */
    public void beginCommunication() {
        makeCurrent();
        if (onLane) {
            return;
        }
        Cu.check(JCudaDriver.cuEventRecord(computeReady, compute), "cuEventRecord(compute ready)");
        Cu.check(JCudaDriver.cuStreamWaitEvent(comm, computeReady, 0), "cuStreamWaitEvent(communication)");
    }

    /**
     * Orders the compute stream after everything issued on the communication stream so far; inside a
     * communication-queue operation nothing (the compute waits when the caller says).
     */
    public void endCommunication() {
        if (onLane) {
            return;
        }
        Cu.check(JCudaDriver.cuEventRecord(commDone, comm), "cuEventRecord(communication done)");
        Cu.check(JCudaDriver.cuStreamWaitEvent(compute, commDone, 0), "cuStreamWaitEvent(compute)");
    }

    CublasLt cublasLt() {
        if (cublasLt == null) {
            cublasLt = new CublasLt(this);
        }
        return cublasLt;
    }

    /** Launches kernel {@code fn} on the compute stream; args are tensors (their address), Integer, Long, Float, Double. */
    void launch(String fn, int grid, int block, int sharedBytes, Object... args) {
        if (grid <= 0) {
            return;
        }
        makeCurrent();
        CUfunction f = module.function(fn);
        Pointer[] ps = new Pointer[args.length];
        for (int i = 0; i < args.length; i++) {
            Object a = args[i];
            if (a instanceof Tensor t) {
                ps[i] = Pointer.to(new long[] {t.address()});
            } else if (a instanceof Integer v) {
                ps[i] = Pointer.to(new int[] {v});
            } else if (a instanceof Long v) {
                ps[i] = Pointer.to(new long[] {v});
            } else if (a instanceof Float v) {
                ps[i] = Pointer.to(new float[] {v});
            } else if (a instanceof Double v) {
                ps[i] = Pointer.to(new double[] {v});
            } else {
                throw new IllegalArgumentException("kernel argument " + i + " of " + fn + " is " + a);
            }
        }
        Cu.check(JCudaDriver.cuLaunchKernel(f, grid, 1, 1, block, 1, 1, sharedBytes, compute, Pointer.to(ps), null),
                "cuLaunchKernel(" + fn + ", grid " + grid + ", block " + block + ")");
    }

    /** Releases all memory, streams and events. Idempotent. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        makeCurrent();
        JCudaDriver.cuStreamSynchronize(lane);
        JCudaDriver.cuStreamSynchronize(comm);
        JCudaDriver.cuStreamSynchronize(compute);
        if (cublasLt != null) {
            cublasLt.close();
        }
        staging.close();
        allocator.freeAll();
        JCudaDriver.cuEventDestroy(computeReady);
        JCudaDriver.cuEventDestroy(commDone);
        JCudaDriver.cuStreamDestroy(compute);
        JCudaDriver.cuStreamDestroy(comm);
        JCudaDriver.cuStreamDestroy(lane);
    }

    @Override
    public String toString() {
        return name;
    }
}
