package org.sparkatron.comm;

import java.nio.ByteBuffer;
import org.sparkatron.tensor.Tensor;

/** Argument checks and helpers shared by communicator implementations. Stateless. */
public final class CommArgs {
    private CommArgs() {
    }

    public static void host(Tensor t, String what) {
        if (t == null) {
            throw new IllegalArgumentException(what + " tensor is null");
        }
        if (!t.isHost()) {
            throw new IllegalArgumentException(what + " tensor " + t + " is not in host memory");
        }
        Reductions.checkSupported(t.dtype());
    }

    public static void sameDType(Tensor a, Tensor b) {
        if (a.dtype() != b.dtype()) {
            throw new IllegalArgumentException("dtype mismatch: " + a.dtype() + " vs " + b.dtype());
        }
    }

    public static void peer(int peer, int size, int self) {
        if (peer < 0 || peer >= size) {
            throw new IllegalArgumentException("peer " + peer + " outside group of size " + size);
        }
        if (peer == self) {
            throw new IllegalArgumentException("point-to-point with self (rank " + self + ") is not supported");
        }
    }

    public static void tag(int tag) {
        if (tag < 0) {
            throw new IllegalArgumentException("tags must be >= 0 (negative tags are reserved), got " + tag);
        }
    }

    /** Checks counts has one non-negative entry per rank and returns their sum. */
    public static long counts(int[] counts, int size, String what) {
        if (counts == null || counts.length != size) {
            throw new IllegalArgumentException(what + " must have one entry per rank (" + size + "), got "
                    + (counts == null ? "null" : counts.length));
        }
        long sum = 0;
        for (int i = 0; i < size; i++) {
            if (counts[i] < 0) {
                throw new IllegalArgumentException(what + "[" + i + "] is negative: " + counts[i]);
            }
            sum += counts[i];
        }
        return sum;
    }

    /**
     * Whether a reduce-scatter's {@code out} is exactly block {@code rank} of {@code in} (in place, as NCCL
     * allows); false when they do not overlap; any other overlap is refused.
     */
    public static boolean inPlaceBlock(Tensor in, Tensor out, int rank) {
        if (in.storage() != out.storage()) {
            return false;
        }
        long a0 = in.byteOffset();
        long a1 = a0 + in.byteSize();
        long b0 = out.byteOffset();
        long b1 = b0 + out.byteSize();
        if (b1 <= a0 || a1 <= b0 || out.byteSize() == 0) {
            return false;
        }
        if (b0 == a0 + rank * out.byteSize()) {
            return true;
        }
        throw new IllegalArgumentException("reduceScatter output overlaps its input other than as this rank's block "
                + rank + " (in place)");
    }

    public static void numel(Tensor t, long expected, String what) {
        if (t.numel() != expected) {
            throw new IllegalArgumentException(what + " has " + t.numel() + " elements, expected " + expected);
        }
    }

    /** Copies all of {@code src}'s bytes to {@code dst} (same byte size), through native memory. */
    public static void copy(Tensor src, Tensor dst) {
        if (src.byteSize() != dst.byteSize()) {
            throw new IllegalArgumentException("copy of " + src.byteSize() + " bytes into " + dst.byteSize());
        }
        if (src.storage() == dst.storage() && src.byteOffset() == dst.byteOffset()) {
            return;
        }
        ByteBuffer d = dst.hostBuffer();
        d.put(src.hostBuffer());
    }
}
