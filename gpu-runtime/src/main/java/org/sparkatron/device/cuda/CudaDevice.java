package org.sparkatron.device.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;
import java.util.TreeMap;
import jcuda.Pointer;
import jcuda.driver.CUDA_MEMCPY2D;
import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmemorytype;
import jcuda.driver.JCudaDriver;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One rank's CUDA device: the device's primary context, a compute stream and a communication stream with
 * events between them, a caching allocator over {@code cuMemAlloc}, pinned staging for uploads, our kernels
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
public final class CudaDevice implements AutoCloseable {
    private static final long SMALL = 1L << 20;
    private static final ThreadLocal<Integer> CURRENT = new ThreadLocal<>();

    private final int ordinal;
    private final String name;
    private final Cu.Stream compute = new Cu.Stream();
    private final Cu.Stream comm = new Cu.Stream();
    private final CUevent computeReady = new CUevent();
    private final CUevent commDone = new CUevent();
    private final CudaModule module;
    private final PinnedStaging staging;
    private final TreeMap<Long, ArrayDeque<Long>> cache = new TreeMap<>();
    private final Map<Long, Long> blockSize = new HashMap<>();
    private final Map<Long, Boolean> live = new HashMap<>();
    private final long errorFlag;
    private final ByteBuffer errorHost = ByteBuffer.allocateDirect(16).order(ByteOrder.nativeOrder());
    private final CudaKernels kernels;
    private final java.util.List<Runnable> syncChecks = new java.util.concurrent.CopyOnWriteArrayList<>();
    private CublasLt cublasLt;
    private long reserved;
    private long inUse;
    private long peak;
    private long systemAllocations;
    private long synchronizations;
    private boolean closed;

    /** The device with CUDA ordinal {@code ordinal} (see {@link CudaRuntime#availability()} first). */
    public CudaDevice(int ordinal) {
        this.ordinal = ordinal;
        this.name = "cuda:" + ordinal;
        makeCurrent();
        Cu.check(JCudaDriver.cuStreamCreate(compute, jcuda.driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate(compute)");
        Cu.check(JCudaDriver.cuStreamCreate(comm, jcuda.driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate(communication)");
        Cu.check(JCudaDriver.cuEventCreate(computeReady, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        Cu.check(JCudaDriver.cuEventCreate(commDone, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        this.module = CudaModule.forDevice(ordinal);
        this.staging = new PinnedStaging(8 << 20);
        this.errorFlag = allocateBlock(16);
        Cu.check(JCudaDriver.cuMemsetD8Async(Cu.ptr(errorFlag), (byte) 0, 16, compute), "cuMemsetD8Async(error flag)");
        this.kernels = new CudaKernels(this);
    }

    /** e.g. "cuda:0". */
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

    /** A tensor in device memory (contents undefined). */
    public Tensor allocate(DType dtype, int... shape) {
        long n = 1;
        for (int d : shape) {
            n = Math.multiplyExact(n, (long) d);
        }
        long bytes = Math.multiplyExact(n, (long) dtype.bytes());
        long addr = allocateBlock(bytes);
        return new Tensor(new CudaStorage(addr, bytes, name), 0, dtype, shape);
    }

    /** Returns {@code t}'s block to the cache (null is ignored). */
    public void release(Tensor t) {
        if (t == null) {
            return;
        }
        long addr = t.storage().address();
        if (live.remove(addr) == null) {
            throw new IllegalArgumentException(name + ": release of a block that is not in use (released twice, or not from this device)");
        }
        long size = blockSize.get(addr);
        inUse -= size;
        cache.computeIfAbsent(size, s -> new ArrayDeque<>()).push(addr);
    }

    static long sizeClass(long bytes) {
        long unit = bytes < SMALL ? 512 : 2L << 20;
        return Math.max(unit, Math.addExact(bytes, unit - 1) / unit * unit);
    }

    long allocateBlock(long bytes) {
        makeCurrent();
        long want = sizeClass(bytes);
        Map.Entry<Long, ArrayDeque<Long>> e = cache.ceilingEntry(want);
        long addr;
        if (e != null && e.getKey() <= 2 * want) {
            addr = e.getValue().pop();
            if (e.getValue().isEmpty()) {
                cache.remove(e.getKey());
            }
        } else {
            addr = fromDriver(want);
        }
        live.put(addr, Boolean.TRUE);
        inUse += blockSize.get(addr);
        peak = Math.max(peak, inUse);
        return addr;
    }

    private long fromDriver(long size) {
        Cu.OutPtr p = new Cu.OutPtr();
        int r = JCudaDriver.cuMemAlloc(p, size);
        if (r == jcuda.driver.CUresult.CUDA_ERROR_OUT_OF_MEMORY) {
            emptyCache();
            r = JCudaDriver.cuMemAlloc(p, size);
        }
        if (r != jcuda.driver.CUresult.CUDA_SUCCESS) {
            long[] free = new long[1], total = new long[1];
            JCudaDriver.cuMemGetInfo(free, total);
            throw new CudaException(String.format(java.util.Locale.ROOT,
                    "cuMemAlloc(%,d bytes) on %s: %s (%,d bytes free of %,d; this rank holds %,d)", size, name,
                    jcuda.driver.CUresult.stringFor(r), free[0], total[0], reserved));
        }
        blockSize.put(p.address(), size);
        reserved += size;
        systemAllocations++;
        return p.address();
    }

    /** Returns every cached (not in use) block to the driver. */
    public void emptyCache() {
        makeCurrent();
        for (ArrayDeque<Long> q : cache.values()) {
            for (long a : q) {
                reserved -= blockSize.remove(a);
                Cu.check(JCudaDriver.cuMemFree(Cu.ptr(a)), "cuMemFree");
            }
        }
        cache.clear();
    }

    /** Bytes held from the driver (in use plus cached). */
    public long reservedBytes() {
        return reserved;
    }

    /** Bytes in live tensors' blocks. */
    public long inUseBytes() {
        return inUse;
    }

    /** The largest {@link #inUseBytes()} so far. */
    public long peakInUseBytes() {
        return peak;
    }

    /** cuMemAlloc calls so far (cache misses). */
    public long systemAllocations() {
        return systemAllocations;
    }

    /** Host synchronisations so far. */
    public long synchronizations() {
        return synchronizations;
    }

    // ---- copies ----

    /** dst = src, device to device (same byte size), stream-ordered. */
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
    public void upload(Tensor dst, ByteBuffer src) {
        if (src.remaining() != dst.byteSize()) {
            throw new IllegalArgumentException("upload of " + src.remaining() + " bytes into a " + dst.byteSize() + "-byte tensor");
        }
        makeCurrent();
        staging.upload(dst.address(), src, compute);
    }

    /** Device to host: synchronises, then writes src's bytes into dst from its position. */
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
    public Tensor toHost(Tensor t) {
        Tensor h = Tensor.allocateHost(t.dtype(), t.shape());
        download(h.hostBuffer(), t);
        return h;
    }

    /** dst = host (same byte size). */
    public void fromHost(Tensor dst, Tensor host) {
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
    public void synchronize() {
        makeCurrent();
        synchronizations++;
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

    /** The raw communication stream handle (for NCCL, between begin/endCommunication). */
    public long communicationStreamAddress() {
        return comm.address();
    }

    /** An event behind everything queued on the communication stream so far. */
    public CudaEvent recordCommunicationEvent() {
        return new CudaEvent(this, comm);
    }

    /**
     * Runs {@code check} after every {@link #synchronize()} (a communicator reports its failure there, so
     * results of an aborted operation are never read as valid).
     */
    public void addSynchronizeCheck(Runnable check) {
        syncChecks.add(check);
    }

    /** Orders the communication stream after everything issued on the compute stream so far. */
    public void beginCommunication() {
        makeCurrent();
        Cu.check(JCudaDriver.cuEventRecord(computeReady, compute), "cuEventRecord(compute ready)");
        Cu.check(JCudaDriver.cuStreamWaitEvent(comm, computeReady, 0), "cuStreamWaitEvent(communication)");
    }

    /** Orders the compute stream after everything issued on the communication stream so far. */
    public void endCommunication() {
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
        JCudaDriver.cuStreamSynchronize(comm);
        JCudaDriver.cuStreamSynchronize(compute);
        if (cublasLt != null) {
            cublasLt.close();
        }
        staging.close();
        emptyCache();
        for (long a : live.keySet()) {
            JCudaDriver.cuMemFree(Cu.ptr(a));
        }
        live.clear();
        blockSize.clear();
        reserved = 0;
        inUse = 0;
        JCudaDriver.cuEventDestroy(computeReady);
        JCudaDriver.cuEventDestroy(commDone);
        JCudaDriver.cuStreamDestroy(compute);
        JCudaDriver.cuStreamDestroy(comm);
    }

    @Override
    public String toString() {
        return name;
    }
}
