package org.sparkatron.parallel;

import org.sparkatron.device.Device;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/** Row and column block copies between F32 device tensors, for the mappings; device copies, stateless. */
final class Rows {
    private Rows() {
    }

    static void requireF32(Tensor t, String what) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(what + " must be an F32 tensor, got " + t);
        }
    }

    static void requireNumel(Tensor t, long numel, String what) {
        if (t.numel() != numel) {
            throw new IllegalArgumentException(what + " has " + t.numel() + " elements, expected " + numel);
        }
    }

    /** dst[dstFrom, +count) = src[srcFrom, +count) (element offsets). */
    static void copy(Device d, Tensor src, long srcFrom, Tensor dst, long dstFrom, long count) {
        if (count > 0) {
            d.copy(dst.slice(dstFrom, count), src.slice(srcFrom, count));
        }
    }

    /** Copies all of src into dst (same element count) unless they are the same view. */
    static void copyAll(Device d, Tensor src, Tensor dst) {
        if (src.address() == dst.address() && src.numel() == dst.numel()) {
            return;
        }
        requireNumel(dst, src.numel(), "destination");
        d.copy(dst, src);
    }

    /**
     * Column block copy: for each of {@code rows} rows, {@code width} floats from column {@code srcCol} of
     * a row of {@code srcCols} to column {@code dstCol} of a row of {@code dstCols}.
     */
    static void copyColumns(Device d, Tensor src, int srcCols, int srcCol, Tensor dst, int dstCols, int dstCol, int rows,
                            int width) {
        d.copy2d(dst, dstCol, dstCols, src, srcCol, srcCols, rows, width);
    }
}
