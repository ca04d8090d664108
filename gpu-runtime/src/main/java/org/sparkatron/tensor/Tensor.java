package org.sparkatron.tensor;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.util.Arrays;

/**
 * A dense, row-major view of typed elements in a {@link Storage}: shape, dtype and a byte offset, all
 * 64-bit (a flat view may hold more than 2^31 elements; each dimension of a multi-dimensional view fits
 * an {@code int}).
 *
 * <p>Tensors are views; they do not own memory. The storage is owned by whoever allocated it, normally a
 * rank's {@code Device}, which also orders all work on it: kernels, copies and communicator operations
 * on device tensors are stream-ordered, and the host reads device memory only through the device's
 * copies after a synchronisation ({@code org.sparkatron.device.Device}). {@link #hostBuffer()} and its
 * typed forms are for host tensors (staging, files, tests) and for the CPU device's own kernels. Views
 * share storage, so writes through one are seen through all. Not thread-safe: a tensor belongs to one
 * rank's thread at a time.
 */
public final class Tensor {
    private final Storage storage;
    private final long byteOffset;
    private final long[] shape;
    private final DType dtype;
    private final long numel;

    public Tensor(Storage storage, long byteOffset, DType dtype, int... shape) {
        this(storage, byteOffset, dtype, toLong(shape));
    }

    public Tensor(Storage storage, long byteOffset, DType dtype, long... shape) {
        this.storage = storage;
        this.byteOffset = byteOffset;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.numel = numel(shape);
        if (byteOffset < 0 || byteOffset + numel * dtype.bytes() > storage.byteSize()) {
            throw new IllegalArgumentException("view [" + byteOffset + ", +" + numel * dtype.bytes() + ") bytes of "
                    + Arrays.toString(shape) + " " + dtype + " exceeds storage of " + storage.byteSize() + " bytes");
        }
    }

    /** The element count of a shape, checked for negative dimensions and 64-bit overflow. */
    public static long numel(long... shape) {
        long n = 1;
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    static long[] toLong(int[] shape) {
        long[] s = new long[shape.length];
        for (int i = 0; i < shape.length; i++) {
            s[i] = shape[i];
        }
        return s;
    }

    /**
     * A fresh zero-filled tensor in its own host storage: for staging, files, tools and tests. Model,
     * parallel, optimizer, precision and training code allocate from their rank's device instead.
     */
    public static Tensor allocateHost(DType dtype, int... shape) {
        return allocateHost(dtype, toLong(shape));
    }

    /** {@link #allocateHost(DType, int...)} with 64-bit dimensions. */
    public static Tensor allocateHost(DType dtype, long... shape) {
        return new Tensor(HostStorage.allocate(Math.multiplyExact(numel(shape), (long) dtype.bytes())), 0, dtype, shape);
    }

    public Storage storage() {
        return storage;
    }

    public long byteOffset() {
        return byteOffset;
    }

    public DType dtype() {
        return dtype;
    }

    /** The shape; throws if a dimension does not fit an int (use {@link #size(int)}). */
    public int[] shape() {
        int[] s = new int[shape.length];
        for (int i = 0; i < s.length; i++) {
            s[i] = Math.toIntExact(shape[i]);
        }
        return s;
    }

    /** Dimension i (negative counts from the end) as an int; throws if it does not fit. */
    public int dim(int i) {
        return Math.toIntExact(size(i));
    }

    /** Dimension i (negative counts from the end), 64-bit. */
    public long size(int i) {
        return shape[i < 0 ? shape.length + i : i];
    }

    public int rank() {
        return shape.length;
    }

    public long numel() {
        return numel;
    }

    public long byteSize() {
        return numel * dtype.bytes();
    }

    public boolean isHost() {
        return storage.isHost();
    }

    /** Raw address of the first element (host or device memory). */
    public long address() {
        return storage.address() + byteOffset;
    }

    /**
     * This tensor's bytes as a native-order host buffer (position 0, limit = byteSize). A new buffer
     * object each call, sharing memory with the storage. Throws for device memory, for tensors over 2 GiB
     * (take a {@link #slice}), and on the strict CPU device outside a kernel or device copy.
     */
    public ByteBuffer hostBuffer() {
        if (byteSize() > Integer.MAX_VALUE) {
            throw new IllegalStateException("tensor of " + byteSize() + " bytes is too large for one ByteBuffer: take a slice");
        }
        return storage.hostBuffer(byteOffset, (int) byteSize());
    }

    /** F32 elements as a FloatBuffer view (index 0 = first element); see {@link #hostBuffer()}. */
    public FloatBuffer floats() {
        requireDType(DType.F32);
        return hostBuffer().asFloatBuffer();
    }

    /** I32 elements as an IntBuffer view; see {@link #hostBuffer()}. */
    public IntBuffer ints() {
        requireDType(DType.I32);
        return hostBuffer().asIntBuffer();
    }

    /** A view of the same elements with another shape of equal element count. */
    public Tensor view(int... newShape) {
        return view(toLong(newShape));
    }

    /** {@link #view(int...)} with 64-bit dimensions. */
    public Tensor view(long... newShape) {
        if (numel(newShape) != numel) {
            throw new IllegalArgumentException("cannot view " + Arrays.toString(shape) + " as " + Arrays.toString(newShape));
        }
        return new Tensor(storage, byteOffset, dtype, newShape);
    }

    /** A view of rows [from, from+count) along the first dimension. */
    public Tensor narrowRows(long from, long count) {
        if (from < 0 || count < 0 || from + count > shape[0]) {
            throw new IndexOutOfBoundsException("rows [" + from + ", " + (from + count) + ") of " + shape[0]);
        }
        long[] s = shape.clone();
        s[0] = count;
        long rowBytes = numel / Math.max(1, shape[0]) * dtype.bytes();
        return new Tensor(storage, byteOffset + from * rowBytes, dtype, s);
    }

    /** A flat view of elements [from, from+count). */
    public Tensor slice(long from, long count) {
        if (from < 0 || count < 0 || from + count > numel) {
            throw new IndexOutOfBoundsException("elements [" + from + ", " + (from + count) + ") of " + numel);
        }
        return new Tensor(storage, byteOffset + from * dtype.bytes(), dtype, count);
    }

    /** The same memory as a flat view of another dtype (for copies and communicators that move bytes). */
    public Tensor reinterpret(DType other) {
        if (byteSize() % other.bytes() != 0) {
            throw new IllegalArgumentException(byteSize() + " bytes do not hold whole " + other + " elements");
        }
        return new Tensor(storage, byteOffset, other, byteSize() / other.bytes());
    }

    private void requireDType(DType expected) {
        if (dtype != expected) {
            throw new IllegalStateException("tensor is " + dtype + ", expected " + expected);
        }
    }

    @Override
    public String toString() {
        return "Tensor" + Arrays.toString(shape) + " " + dtype + (isHost() ? " host" : " device");
    }
}
