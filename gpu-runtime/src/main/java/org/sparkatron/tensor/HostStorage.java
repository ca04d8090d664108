package org.sparkatron.tensor;

import java.lang.ref.Cleaner;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Pointer;

/**
 * Host memory, 64-byte aligned for SIMD and BLAS, addressed in 64 bits.
 *
 * <p>Blocks under 2 GiB are direct {@link ByteBuffer}s: every window handed out is a slice that keeps the
 * block alive, so the garbage collector never frees memory a buffer still reads. Larger blocks are native
 * allocations (there is no larger buffer); their windows do not keep them alive, so whoever allocates one
 * keeps the storage reachable while windows are in use (the CPU device's allocator holds every block it
 * made until it closes). {@link #free()} releases either kind at once; otherwise the collector does.
 * Thread-safe to read; writers coordinate as for any memory.
 */
public final class HostStorage implements Storage {
    private static final int ALIGN = 64;
    private static final long BUFFER_LIMIT = Integer.MAX_VALUE - 2L * ALIGN;
    private static final Cleaner CLEANER = Cleaner.create();

    private final long address;
    private final long bytes;
    private final ByteBuffer root;       // the block as one buffer (blocks under 2 GiB), else null
    private Cleaner.Cleanable cleanable; // native blocks: set once, right after construction

    private HostStorage(long address, long bytes, ByteBuffer root) {
        this.address = address;
        this.bytes = bytes;
        this.root = root;
    }

    /** Zero-filled storage of {@code bytes} (any size the machine has memory for). */
    public static HostStorage allocate(long bytes) {
        if (bytes < 0) {
            throw new IllegalArgumentException("negative allocation size " + bytes);
        }
        if (bytes <= BUFFER_LIMIT) {
            // alignedSlice rounds capacity down to the alignment: over-allocate by one rounded-up block
            long rounded = (bytes + ALIGN - 1) / ALIGN * ALIGN;
            ByteBuffer raw = ByteBuffer.allocateDirect((int) rounded + ALIGN);
            ByteBuffer b = raw.alignedSlice(ALIGN).limit((int) bytes).slice().order(ByteOrder.nativeOrder());
            return new HostStorage(new Pointer(b).address(), bytes, b);
        }
        Pointer raw = Pointer.malloc(bytes + ALIGN);
        if (raw == null || raw.isNull()) {
            throw new OutOfMemoryError("the system refused " + bytes + " bytes of host memory");
        }
        long base = raw.address();
        long aligned = (base + ALIGN - 1) & -ALIGN;
        Pointer.memset(at(aligned), 0, bytes);
        HostStorage s = new HostStorage(aligned, bytes, null);
        s.cleanable = CLEANER.register(s, () -> Pointer.free(at(base)));
        return s;
    }

    /** Wraps an existing direct buffer (for example a memory-mapped file region); never freed here. */
    public static HostStorage wrap(ByteBuffer direct) {
        if (!direct.isDirect()) {
            throw new IllegalArgumentException("host storage needs a direct buffer");
        }
        ByteBuffer b = direct.slice().order(ByteOrder.nativeOrder());
        return new HostStorage(new Pointer(b).address(), b.capacity(), b);
    }

    /** A JavaCPP pointer at a raw address (owning nothing). */
    public static Pointer at(long address) {
        return new RawPointer(address);
    }

    /** A byte window at a raw address, for a direct buffer over native memory. */
    private static final class Window extends BytePointer {
        Window(long at, int length) {
            this.address = at;
            this.limit = length;
            this.capacity = length;
        }
    }

    /** (A named class: inside an anonymous subclass, {@code address} would mean Pointer's own field.) */
    private static final class RawPointer extends Pointer {
        RawPointer(long at) {
            this.address = at;
        }
    }

    /**
     * Releases a native block now (blocks of 2 GiB and more); the storage must not be used afterwards.
     * Buffer-backed blocks are left to the collector, which frees them once no window is reachable.
     * Idempotent.
     */
    public void free() {
        if (cleanable != null) {
            cleanable.clean();
        }
    }

    @Override
    public long address() {
        return address;
    }

    @Override
    public long byteSize() {
        return bytes;
    }

    @Override
    public boolean isHost() {
        return true;
    }

    @Override
    public ByteBuffer hostBuffer(long offset, int length) {
        if (offset < 0 || length < 0 || offset + length > bytes) {
            throw new IndexOutOfBoundsException("bytes [" + offset + ", +" + length + ") of a " + bytes + "-byte storage");
        }
        if (root != null) {
            return root.slice((int) offset, length).order(ByteOrder.nativeOrder());
        }
        if (length == 0) {
            return ByteBuffer.allocateDirect(0).order(ByteOrder.nativeOrder());
        }
        return new Window(address + offset, length).asByteBuffer().order(ByteOrder.nativeOrder());
    }
}
