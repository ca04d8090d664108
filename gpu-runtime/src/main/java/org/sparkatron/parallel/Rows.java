package org.sparkatron.parallel;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/** Row and column copies between F32 host tensors, for the mappings and sharding. Stateless. */
final class Rows {
    private Rows() {
    }

    static void requireF32(Tensor t, String what) {
        if (t.dtype() != DType.F32 || !t.isHost()) {
            throw new IllegalArgumentException(what + " must be an F32 host tensor, got " + t);
        }
    }

    static void requireNumel(Tensor t, long numel, String what) {
        if (t.numel() != numel) {
            throw new IllegalArgumentException(what + " has " + t.numel() + " elements, expected " + numel);
        }
    }

    /** dst[0, count) = src[srcFrom, srcFrom + count) (element offsets). */
    static void copy(Tensor src, long srcFrom, Tensor dst, long dstFrom, long count) {
        if (count == 0) {
            return;
        }
        ByteBuffer s = src.hostBuffer();
        ByteBuffer d = dst.hostBuffer();
        s.position(Math.toIntExact(4 * srcFrom)).limit(Math.toIntExact(4 * (srcFrom + count)));
        d.position(Math.toIntExact(4 * dstFrom));
        d.put(s);
    }

    /** Copies all of src into dst (same element count) unless they are the same view. */
    static void copyAll(Tensor src, Tensor dst) {
        if (src.address() == dst.address() && src.numel() == dst.numel()) {
            return;
        }
        requireNumel(dst, src.numel(), "destination");
        copy(src, 0, dst, 0, src.numel());
    }

    /**
     * Column block copy: for each of {@code rows} rows, {@code width} floats from column {@code srcCol} of
     * a row of {@code srcCols} to column {@code dstCol} of a row of {@code dstCols}.
     */
    static void copyColumns(Tensor src, int srcCols, int srcCol, Tensor dst, int dstCols, int dstCol, int rows, int width) {
        FloatBuffer s = src.floats();
        FloatBuffer d = dst.floats();
        for (int r = 0; r < rows; r++) {
            d.put(r * dstCols + dstCol, s, r * srcCols + srcCol, width);
        }
    }

    /** out[r, :] += bias for r in [0, rows). */
    static void addBias(Tensor out, Tensor bias, int rows, int cols) {
        FloatBuffer o = out.floats();
        float[] b = new float[cols];
        bias.floats().get(0, b);
        for (int r = 0; r < rows; r++) {
            int base = r * cols;
            for (int j = 0; j < cols; j++) {
                o.put(base + j, o.get(base + j) + b[j]);
            }
        }
    }
}
