package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import org.sparkatron.precision.Fp8Format;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The CPU device's FP8 kernels ({@link CpuKernels} delegates here; the contracts are on
 * {@link org.sparkatron.device.Kernels}). Casts are exact ({@link Fp8Format#encode}); FP8 operands are F32
 * tensors holding the codes' values (exact in fp32), or FP8 codes for the casts; a GEMM is OpenBLAS's sgemm
 * on those values with {@code alpha = scaleInvA * scaleInvB}: the products of two FP8 values are exact in
 * fp32, so this is the GPU's computation (fp32 accumulation, one scaling of the result) up to summation order.
 *
 * <p>Stateless; runs to completion on the calling thread.
 */
final class CpuFp8 {
    private CpuFp8() {
    }

    /** fmaxf: NaN in either argument yields the other. */
    private static float fmax(float a, float b) {
        return Float.isNaN(a) ? b : Float.isNaN(b) ? a : Math.max(a, b);
    }

    private static void requireF32(Tensor t, String what) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(what + " must be F32, got " + t);
        }
    }

    static void amax(Tensor x, long count, Tensor amax, int slot) {
        requireF32(x, "amax input");
        requireF32(amax, "amax");
        float m = 0f;
        for (long at = 0; at < count; at += CpuFlatKernels.WINDOW) {
            int len = (int) Math.min(CpuFlatKernels.WINDOW, count - at);
            FloatBuffer f = x.slice(at, len).floats();
            for (int i = 0; i < len; i++) {
                float a = Math.abs(f.get(i));
                if (a > m) { // NaN compares false: ignored
                    m = a;
                }
            }
        }
        FloatBuffer out = amax.floats();
        out.put(slot, fmax(out.get(slot), m));
    }

    static void castToFp8(Tensor dst, Tensor src, long count, Fp8Format format, Tensor scale, int slot, Tensor amaxOut,
                          int amaxSlot) {
        requireF32(src, "cast source");
        requireF32(scale, "scale");
        if (dst.dtype() != DType.F32 && dst.dtype() != format.dtype()) {
            throw new IllegalArgumentException("an " + format + " cast writes " + format.dtype() + " codes or F32 values, got " + dst);
        }
        float s = scale.floats().get(slot);
        boolean codes = dst.dtype() != DType.F32;
        float m = 0f;
        for (long at = 0; at < count; at += CpuFlatKernels.WINDOW) {
            int len = (int) Math.min(CpuFlatKernels.WINDOW, count - at);
            FloatBuffer in = src.slice(at, len).floats();
            if (codes) {
                ByteBuffer out = dst.slice(at, len).hostBuffer();
                for (int i = 0; i < len; i++) {
                    float v = in.get(i);
                    m = Math.abs(v) > m ? Math.abs(v) : m;
                    out.put(i, (byte) format.encode(v * s));
                }
            } else {
                FloatBuffer out = dst.slice(at, len).floats();
                for (int i = 0; i < len; i++) {
                    float v = in.get(i);
                    m = Math.abs(v) > m ? Math.abs(v) : m;
                    out.put(i, format.round(v * s));
                }
            }
        }
        if (amaxOut != null) {
            FloatBuffer a = amaxOut.floats();
            a.put(amaxSlot, fmax(a.get(amaxSlot), m));
        }
    }

    static void scaleFromAmax(Tensor amax, Tensor scale, Tensor scaleInv, int from, int count, float fp8Max) {
        FloatBuffer a = amax.floats();
        FloatBuffer s = scale.floats();
        FloatBuffer si = scaleInv.floats();
        for (int j = from; j < from + count; j++) {
            float am = a.get(j);
            float sc = 1f;
            if (am > 0 && Float.isFinite(am)) {
                sc = fp8Max / am;
                if (Float.isInfinite(sc)) {
                    sc = Float.MAX_VALUE;
                }
            }
            s.put(j, sc);
            si.put(j, 1f / sc);
        }
    }

    static void delayedScaling(Tensor history, Tensor scale, Tensor scaleInv, int len, int slots, int from, int count,
                               boolean useMax, float scaledMax) {
        FloatBuffer h = history.floats();
        FloatBuffer s = scale.floats();
        FloatBuffer si = scaleInv.floats();
        for (int j = from; j < from + count; j++) {
            float last = h.get(j);
            float amax = 0f;
            if (last != 0f) {
                // roll in place: entry i takes entry i + 1, the last entry takes this pass's amax, row 0 is cleared;
                // the maximum runs over the window including this pass's amax
                for (int i = 0; i < len; i++) {
                    float a = i < len - 1 ? h.get((i + 1) * slots + j) : last;
                    amax = fmax(amax, a);
                    h.put(i * slots + j, i > 0 ? a : 0f);
                }
            }
            if (!useMax) {
                amax = last;
            }
            float sc = Float.isFinite(amax) && amax > 0 ? scaledMax / amax : s.get(j);
            if (Float.isInfinite(sc)) {
                sc = Float.MAX_VALUE;
            }
            s.put(j, sc);
            si.put(j, 1f / sc);
        }
    }

    private static float alpha(Tensor scaleInv, int a, int b) {
        FloatBuffer si = scaleInv.floats();
        return si.get(a) * si.get(b);
    }

    private static void requireValues(Tensor... operands) {
        for (Tensor t : operands) {
            if (t.dtype() != DType.F32) {
                throw new IllegalArgumentException("the CPU FP8 GEMM takes F32 tensors holding FP8 values (the CPU device's"
                        + " FP8 storage), got " + t);
            }
        }
    }

    static void linearForward(Tensor out, Tensor x8, Tensor w8, Tensor scaleInv, int xSlot, int wSlot, Tensor bias, int n,
                              int in, int outF) {
        requireValues(x8, w8);
        float beta = 0f;
        if (bias != null) {
            FloatBuffer o = out.floats();
            FloatBuffer bb = bias.floats();
            for (int r = 0; r < n; r++) {
                o.put(r * outF, bb, 0, outF);
            }
            beta = 1f;
        }
        Blas.sgemm(false, true, n, outF, in, alpha(scaleInv, xSlot, wSlot), x8, 0, in, w8, 0, in, beta, out, 0, outF);
    }

    static void linearBackward(CpuKernels k, Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor dy8,
                               Tensor x8, Tensor w8, Tensor scaleInv, int dySlot, int xSlot, int wSlot, int n, int in, int outF) {
        requireValues(dy8, x8, w8);
        if (dx != null) {
            Blas.sgemm(false, false, n, in, outF, alpha(scaleInv, dySlot, wSlot), dy8, 0, outF, w8, 0, in,
                    accumulateDx ? 1f : 0f, dx, 0, in);
        }
        Blas.sgemm(true, false, outF, in, n, alpha(scaleInv, dySlot, xSlot), dy8, 0, outF, x8, 0, in, 1f, dw, 0, in);
        if (dbias != null) {
            k.biasGradient(dbias, dout, n, outF);
        }
    }
}
