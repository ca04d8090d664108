package org.sparkatron.device.cpu;

import static org.sparkatron.tensor.HostStorage.at;

import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import org.bytedeco.javacpp.Pointer;
import org.sparkatron.device.CachingAllocator;
import org.sparkatron.device.Device;
import org.sparkatron.device.HostAccess;
import org.sparkatron.device.KernelProxy;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.MemoryStats;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.HostStorage;
import org.sparkatron.tensor.Storage;
import org.sparkatron.tensor.Tensor;

/**
 * The CPU as a {@link Device}: host memory from a {@link CachingAllocator}, {@link CpuKernels}, copies by
 * {@code memcpy}. Every call runs to completion before it returns, so the stream order of the
 * {@link Device} contract holds trivially and {@link #synchronize()} only counts.
 *
 * <p>{@link #strict()} makes the test variant: its memory refuses host access outside its own kernels,
 * copies and communicator operations ({@link HostAccess}), naming the offending caller; fresh blocks are
 * filled with NaN bytes; {@link #toHost} always copies. Model, parallel, optimizer, precision and training
 * tests run on both, so code that would read device memory from Java, rely on zeroed allocations or skip
 * a synchronisation fails in CI instead of on a GPU.
 *
 * <p>One rank's thread; see {@link Device} for threading and failure.
 */
public final class CpuDevice implements Device {
    private final boolean strict;
    private final String name;
    private final CachingAllocator<Storage> allocator;
    private final CpuKernels cpuKernels;
    private final Kernels kernels;
    private long syncs;

    private CpuDevice(boolean strict, boolean simd, long capacity) {
        this(strict, simd, capacity, java.util.function.UnaryOperator.identity());
    }

    private CpuDevice(boolean strict, boolean simd, long capacity, java.util.function.UnaryOperator<Kernels> wrap) {
        this.strict = strict;
        this.name = strict ? "cpu-strict" : "cpu";
        this.allocator = new CachingAllocator<>(name, capacity, new CachingAllocator.Backend<>() {
            @Override
            public Storage allocate(long bytes) {
                HostStorage h = HostStorage.allocate(bytes);
                return strict ? new StrictStorage(h, name) : h;
            }

            @Override
            public void free(Storage block) {
                (block instanceof StrictStorage s ? s.host() : (HostStorage) block).free();
            }
        });
        this.cpuKernels = new CpuKernels(simd, this);
        this.kernels = wrap.apply(strict ? scoped(cpuKernels) : cpuKernels);
    }

    /** The CPU device, with SIMD kernels where the JVM has the Vector API (see {@link CpuKernels#CpuKernels()}). */
    public CpuDevice() {
        this(false, CpuKernels.simdByDefault(), physicalMemory());
    }

    /** The CPU device with an explicit kernel choice ({@code simd} needs the Vector API module). */
    public static CpuDevice create(boolean simd) {
        return new CpuDevice(false, simd, physicalMemory());
    }

    /**
     * A CPU device that holds at most {@code capacityBytes} (the machine's physical memory by default): for
     * several ranks sharing one host, give each its part, so a model too large for its share is refused up
     * front instead of swapping.
     */
    public static CpuDevice withCapacity(long capacityBytes) {
        return new CpuDevice(false, CpuKernels.simdByDefault(), capacityBytes);
    }

    /**
     * The CPU device whose {@link #kernels()} are {@code wrap} applied to its own: for profiles (a proxy that
     * times each call; {@link KernelProxy} makes one that sees the MoE kernels too). The model reaches kernels only
     * through {@link #kernels()}, so every call goes through it.
     */
    public static CpuDevice withKernels(java.util.function.UnaryOperator<Kernels> wrap) {
        return new CpuDevice(false, CpuKernels.simdByDefault(), physicalMemory(), wrap);
    }

    /** The strict test device (see the class comment). */
    public static CpuDevice strict() {
        return new CpuDevice(true, CpuKernels.simdByDefault(), physicalMemory());
    }

    /** Whether this is the strict test device. */
    public boolean isStrict() {
        return strict;
    }

    /** The machine's physical memory in bytes (the default capacity). */
    public static long physicalMemory() {
        if (ManagementFactory.getOperatingSystemMXBean() instanceof com.sun.management.OperatingSystemMXBean os) {
            return os.getTotalMemorySize();
        }
        return Long.MAX_VALUE;
    }

    /**
     * Kernels that run inside a host-access scope (the strict device's memory checks every access), the MoE
     * kernels of {@link Kernels#moe()} too.
     */
    private static Kernels scoped(Kernels k) {
        return KernelProxy.wrap(k, (kernel, args, call) -> {
            try (HostAccess.Scope s = HostAccess.enter()) {
                return call.proceed();
            }
        });
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public Kernels kernels() {
        return kernels;
    }

    @Override
    public Tensor allocate(MemoryKind kind, DType dtype, long... shape) {
        long bytes = Math.multiplyExact(Tensor.numel(shape), (long) dtype.bytes());
        Storage block = allocator.allocate(bytes, kind);
        if (strict) {
            Pointer.memset(at(block.address()), 0xFF, block.byteSize()); // NaN in every float format
        }
        return new Tensor(new Lease(block, name), 0, dtype, shape);
    }

    @Override
    public void release(Tensor t) {
        if (t == null) {
            return;
        }
        if (!(t.storage() instanceof Lease lease) || lease.device != name) {
            throw new IllegalArgumentException(name + ": release of " + t + ", which this device did not allocate");
        }
        allocator.release(lease.release());
    }

    @Override
    public Tensor allocateHostStaging(DType dtype, long... shape) {
        return Tensor.allocateHost(dtype, shape);
    }

    @Override
    public void copy(Tensor dst, Tensor src) {
        if (dst.byteSize() != src.byteSize()) {
            throw new IllegalArgumentException("copy of " + src + " into " + dst + ": byte sizes differ");
        }
        if (dst.address() == src.address() || dst.byteSize() == 0) {
            return;
        }
        Pointer.memcpy(at(dst.address()), at(src.address()), dst.byteSize());
    }

    @Override
    public void copy2d(Tensor dst, long dstOffset, long dstPitch, Tensor src, long srcOffset, long srcPitch, long rows,
                       long width) {
        if (dst.dtype() != src.dtype()) {
            throw new IllegalArgumentException("copy2d from " + src + " to " + dst + ": dtypes differ");
        }
        if (rows == 0 || width == 0) {
            return;
        }
        check2d(dst, dstOffset, dstPitch, rows, width, "destination");
        check2d(src, srcOffset, srcPitch, rows, width, "source");
        long e = dst.dtype().bytes();
        try (HostAccess.Scope s = HostAccess.enter()) {
            if (rows == 1 || (dstPitch == width && srcPitch == width)) {
                Pointer.memcpy(at(dst.address() + dstOffset * e), at(src.address() + srcOffset * e), rows * width * e);
                return;
            }
            long span = (rows - 1) * Math.max(dstPitch, srcPitch) + width;
            if (span * e <= Integer.MAX_VALUE && dst.storage().isHost()) {
                // one buffer per side and absolute bulk puts: no JNI call per row
                ByteBuffer d = dst.slice(dstOffset, (rows - 1) * dstPitch + width).hostBuffer();
                ByteBuffer s2 = src.slice(srcOffset, (rows - 1) * srcPitch + width).hostBuffer();
                int len = (int) (width * e);
                for (long r = 0; r < rows; r++) {
                    d.put((int) (r * dstPitch * e), s2, (int) (r * srcPitch * e), len);
                }
                return;
            }
            for (long r = 0; r < rows; r++) {
                Pointer.memcpy(at(dst.address() + (dstOffset + r * dstPitch) * e),
                        at(src.address() + (srcOffset + r * srcPitch) * e), width * e);
            }
        }
    }

    private static void check2d(Tensor t, long offset, long pitch, long rows, long width, String what) {
        if (offset < 0 || pitch < width || offset + (rows - 1) * pitch + width > t.numel()) {
            throw new IndexOutOfBoundsException(what + ": " + rows + " rows of " + width + " at offset " + offset
                    + ", pitch " + pitch + " exceed " + t);
        }
    }

    @Override
    public void upload(Tensor dst, ByteBuffer src) {
        if (src.remaining() != dst.byteSize()) {
            throw new IllegalArgumentException("upload of " + src.remaining() + " bytes into " + dst + " (" + dst.byteSize() + " bytes)");
        }
        try (HostAccess.Scope s = HostAccess.enter()) {
            dst.hostBuffer().put(src.duplicate());
        }
    }

    @Override
    public void download(ByteBuffer dst, Tensor src) {
        synchronize();
        if (dst.remaining() < src.byteSize()) {
            throw new IllegalArgumentException("download of " + src + " into " + dst.remaining() + " bytes");
        }
        try (HostAccess.Scope s = HostAccess.enter()) {
            dst.duplicate().put(src.hostBuffer());
        }
    }

    @Override
    public Tensor toHost(Tensor t) {
        synchronize();
        if (!strict) {
            return t;
        }
        Tensor h = Tensor.allocateHost(t.dtype(), longShape(t));
        try (HostAccess.Scope s = HostAccess.enter()) {
            Pointer.memcpy(at(h.address()), at(t.address()), t.byteSize());
        }
        return h;
    }

    @Override
    public void fromHost(Tensor dst, Tensor host) {
        if (dst.byteSize() != host.byteSize()) {
            throw new IllegalArgumentException("fromHost of " + host + " into " + dst + ": byte sizes differ");
        }
        if (dst.address() != host.address()) {
            Pointer.memcpy(at(dst.address()), at(host.address()), dst.byteSize());
        }
    }

    private static long[] longShape(Tensor t) {
        long[] s = new long[t.rank()];
        for (int i = 0; i < s.length; i++) {
            s[i] = t.size(i);
        }
        return s;
    }

    @Override
    public void synchronize() {
        syncs++;
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
    public long synchronizations() {
        return syncs;
    }

    @Override
    public long systemAllocations() {
        return allocator.systemAllocations();
    }

    /** F32 for every reduced format: the CPU kernels compute in fp32 and round on store (docs/precision.md). */
    @Override
    public DType storageOf(DType format) {
        return format.isFloatingPoint() && format != DType.F64 ? DType.F32 : format;
    }

    @Override
    public long capacityBytes() {
        return allocator.capacity();
    }

    @Override
    public void close() {
        allocator.freeAll();
    }

    @Override
    public String toString() {
        return name;
    }
}
