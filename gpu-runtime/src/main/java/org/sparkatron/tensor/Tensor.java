package org.sparkatron.tensor;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.util.Arrays;

/**
 * A dense, row-major view of typed elements in a {@link Storage}: shape, dtype and a byte offset.
 *
 * <p>Tensors are views; they do not own memory. The storage (an off-heap host buffer, or device memory)
 * is owned by whoever allocated it, typically a parameter or activation arena of one rank. Views share
 * storage, so writes through one are seen through all. Not thread-safe: a tensor belongs to one rank's
 * thread at a time.
 */
public final class Tensor {
    private final Storage storage;
    private final long byteOffset;
    private final int[] shape;
    private final DType dtype;
    private final long numel;

    public Tensor(Storage storage, long byteOffset, DType dtype, int... shape) {
        this.storage = storage;
        this.byteOffset = byteOffset;
        this.dtype = dtype;
        this.shape = shape.clone();
        long n = 1;
        for (int d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
            n *= d;
        }
        this.numel = n;
        if (byteOffset < 0 || byteOffset + n * dtype.bytes() > storage.byteSize()) {
            throw new IllegalArgumentException("view [" + byteOffset + ", +" + n * dtype.bytes()
                    + ") bytes of " + Arrays.toString(shape) + " " + dtype + " exceeds storage of "
                    + storage.byteSize() + " bytes");
        }
    }

    /** A fresh zero-filled tensor in its own off-heap host storage (native byte order). */
    public static Tensor allocateHost(DType dtype, int... shape) {
        long n = 1;
        for (int d : shape) {
            n *= d;
        }
        return new Tensor(HostStorage.allocate(n * dtype.bytes()), 0, dtype, shape);
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

    public int[] shape() {
        return shape.clone();
    }

    public int dim(int i) {
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
     * object each call, sharing memory with the storage. Throws if the storage is not on the host.
     */
    public ByteBuffer hostBuffer() {
        ByteBuffer all = storage.hostBuffer();
        if (byteSize() > Integer.MAX_VALUE) {
            throw new IllegalStateException("tensor of " + byteSize() + " bytes is too large for one ByteBuffer");
        }
        return all.slice(Math.toIntExact(byteOffset), (int) byteSize()).order(ByteOrder.nativeOrder());
    }

    /** F32 elements as a FloatBuffer view (index 0 = first element). */
    public FloatBuffer floats() {
        requireDType(DType.F32);
        return hostBuffer().asFloatBuffer();
    }

    /** I32 elements as an IntBuffer view. */
    public IntBuffer ints() {
        requireDType(DType.I32);
        return hostBuffer().asIntBuffer();
    }

    /** A view of the same elements with another shape of equal element count. */
    public Tensor view(int... newShape) {
        Tensor t = new Tensor(storage, byteOffset, dtype, newShape);
        if (t.numel != numel) {
            throw new IllegalArgumentException("cannot view " + Arrays.toString(shape) + " as "
                    + Arrays.toString(newShape));
        }
        return t;
    }

    /** A view of rows [from, from+count) along the first dimension. */
    public Tensor narrowRows(int from, int count) {
        if (from < 0 || count < 0 || from + count > shape[0]) {
            throw new IndexOutOfBoundsException("rows [" + from + ", " + (from + count) + ") of " + shape[0]);
        }
        int[] s = shape.clone();
        s[0] = count;
        long rowBytes = numel / Math.max(1, shape[0]) * dtype.bytes();
        return new Tensor(storage, byteOffset + from * rowBytes, dtype, s);
    }

    /** A flat view of elements [from, from+count). */
    public Tensor slice(long from, int count) {
        if (from < 0 || count < 0 || from + count > numel) {
            throw new IndexOutOfBoundsException("elements [" + from + ", " + (from + count) + ") of " + numel);
        }
        return new Tensor(storage, byteOffset + from * dtype.bytes(), dtype, count);
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
