package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.ShortBuffer;
import org.sparkatron.precision.HalfFloats;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The CPU kernels over flat blocks, for {@link CpuKernels} (see {@link org.sparkatron.device.Kernels} for each
 * contract): AdamW, the sums behind the gradient norm and the loss, scale, fill and zero, and the 16-bit
 * rounding and widening. A block may hold more than 2^31 elements, so each runs in windows of at most
 * {@link #WINDOW} elements (one {@link ByteBuffer} each). Element-wise work splits over the rank's threads
 * ({@link CpuWorkers}); the sums split only into fixed chunks added in order, so no result depends on the
 * thread count. Stateless.
 */
final class CpuFlatKernels {
    /** Elements per window of flat-block kernels: a window must fit one 2 GiB buffer. */
    static final long WINDOW = 1L << 28;

    private CpuFlatKernels() {
    }

    /** See {@link org.sparkatron.device.Kernels#adamwScaled}: gradients times {@code gradScale} (written back) when it is not 1. */
    static void adamw(boolean simd, Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float gradScale,
                      float beta1, float beta2, float eps, float decay, float stepSize, float invSqrtBc2) {
        for (long at = from, end = from + count; at < end; at += WINDOW) {
            int len = (int) Math.min(WINDOW, end - at);
            Tensor pw = params.slice(at, len);
            Tensor gw = grads.slice(at, len);
            Tensor mw = m.slice(at, len);
            Tensor vw = v.slice(at, len);
            CpuWorkers.forRange(len, 4, (i0, i1) -> {
                ByteBuffer p = pw.hostBuffer();
                ByteBuffer g = gw.hostBuffer();
                ByteBuffer mb = mw.hostBuffer();
                ByteBuffer vb = vw.hostBuffer();
                if (simd) {
                    SimdKernels.adamw(p, g, mb, vb, i0, i1, gradScale, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
                } else {
                    for (int i = i0; i < i1; i++) {
                        adamwScalar(p, g, mb, vb, i, gradScale, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
                    }
                }
            });
        }
    }

    static void adamwScalar(ByteBuffer p, ByteBuffer g, ByteBuffer m, ByteBuffer v, int i, float gradScale, float beta1,
                            float beta2, float eps, float decay, float stepSize, float invSqrtBc2) {
        int at = 4 * i;
        float gi = g.getFloat(at);
        if (gradScale != 1f) {
            gi *= gradScale;
            g.putFloat(at, gi);
        }
        float mi = beta1 * m.getFloat(at) + (1 - beta1) * gi;
        float vi = beta2 * v.getFloat(at) + (1 - beta2) * gi * gi;
        m.putFloat(at, mi);
        v.putFloat(at, vi);
        p.putFloat(at, p.getFloat(at) * decay - stepSize * mi / ((float) Math.sqrt(vi) * invSqrtBc2 + eps));
    }

    static void sumOfSquares(boolean simd, Tensor x, Tensor acc, int slot) {
        double s = 0;
        for (long at = 0, n = x.numel(); at < n; at += WINDOW) {
            int len = (int) Math.min(WINDOW, n - at);
            Tensor w = x.slice(at, len);
            if (simd) {
                s += sumOfSquaresSimd(w, len);
            } else {
                FloatBuffer f = w.floats();
                for (int i = 0; i < len; i++) {
                    double e = f.get(i);
                    s += e * e;
                }
            }
        }
        addScalar(acc, slot, s);
    }

    /**
     * {@link SimdKernels#sumOfSquares} with its chunks on the rank's threads: each chunk's partial sum as one
     * thread would compute it, added in chunk order, then the tail; the same bits for any thread count.
     */
    private static double sumOfSquaresSimd(Tensor w, int len) {
        int upper = SimdKernels.vectorBound(len);
        int chunks = (upper + SimdKernels.SQUARES_CHUNK - 1) / SimdKernels.SQUARES_CHUNK;
        double[] partial = new double[chunks];
        CpuWorkers.forRows(chunks, SimdKernels.SQUARES_CHUNK, (c0, c1) -> {
            java.nio.ByteBuffer b = w.hostBuffer();
            for (int c = c0; c < c1; c++) {
                int from = c * SimdKernels.SQUARES_CHUNK;
                partial[c] = SimdKernels.sumOfSquaresChunk(b, from, Math.min(upper, from + SimdKernels.SQUARES_CHUNK));
            }
        });
        double total = 0;
        for (double p : partial) {
            total += p;
        }
        return SimdKernels.addSquares(w.hostBuffer(), upper, len, total);
    }

    static void sum(Tensor x, long count, Tensor acc, int slot, double scale) {
        double s = 0;
        for (long at = 0; at < count; at += WINDOW) {
            int len = (int) Math.min(WINDOW, count - at);
            FloatBuffer f = x.slice(at, len).floats();
            for (int i = 0; i < len; i++) {
                s += f.get(i);
            }
        }
        addScalar(acc, slot, scale * s);
    }

    private static void addScalar(Tensor acc, int slot, double value) {
        if (acc.dtype() != DType.F64) {
            throw new IllegalArgumentException("accumulator must be F64, got " + acc);
        }
        ByteBuffer b = acc.hostBuffer();
        b.putDouble(8 * slot, b.getDouble(8 * slot) + value);
    }

    static void scale(boolean simd, Tensor x, float factor) {
        for (long at = 0, n = x.numel(); at < n; at += WINDOW) {
            int len = (int) Math.min(WINDOW, n - at);
            Tensor w = x.slice(at, len);
            CpuWorkers.forRange(len, 1, (from, to) -> {
                if (simd) {
                    SimdKernels.scale(w.hostBuffer(), from, to - from, factor);
                } else {
                    FloatBuffer f = w.floats();
                    for (int i = from; i < to; i++) {
                        f.put(i, f.get(i) * factor);
                    }
                }
            });
        }
    }

    static void fill(Tensor x, float value) {
        float[] chunk = new float[(int) Math.min(x.numel(), 1 << 14)];
        java.util.Arrays.fill(chunk, value);
        for (long at = 0, n = x.numel(); at < n; at += WINDOW) {
            int len = (int) Math.min(WINDOW, n - at);
            FloatBuffer f = x.slice(at, len).floats();
            for (int i = 0; i < len; i += chunk.length) {
                f.put(i, chunk, 0, Math.min(chunk.length, len - i));
            }
        }
    }

    static void zero(Tensor x) {
        if (x.byteSize() > 0) {
            org.bytedeco.javacpp.Pointer.memset(org.sparkatron.tensor.HostStorage.at(x.address()), 0, x.byteSize());
        }
    }

    static void round(Tensor dst, Tensor src, long count, DType format) {
        if (format != DType.BF16 && format != DType.F16) {
            throw new IllegalArgumentException("round to BF16 or F16, not " + format);
        }
        if (src.dtype() != DType.F32 || (dst.dtype() != DType.F32 && dst.dtype() != format)) {
            throw new IllegalArgumentException("round from F32 into F32 or " + format + ", got " + src + " -> " + dst);
        }
        boolean bf16 = format == DType.BF16;
        for (long at = 0; at < count; at += WINDOW) {
            int len = (int) Math.min(WINDOW, count - at);
            IntBuffer in = src.slice(at, len).hostBuffer().asIntBuffer();
            if (dst.dtype() == DType.F32) {
                IntBuffer out = dst.slice(at, len).hostBuffer().asIntBuffer();
                for (int i = 0; i < len; i++) {
                    int bits = in.get(i);
                    out.put(i, bf16 ? HalfFloats.roundBf16Bits(bits)
                            : Float.floatToRawIntBits(HalfFloats.roundToF16(Float.intBitsToFloat(bits))));
                }
            } else {
                ShortBuffer out = dst.slice(at, len).hostBuffer().asShortBuffer();
                for (int i = 0; i < len; i++) {
                    float f = Float.intBitsToFloat(in.get(i));
                    out.put(i, bf16 ? HalfFloats.floatToBf16(f) : HalfFloats.floatToF16(f));
                }
            }
        }
    }

    static void widen(Tensor dst, Tensor src, long count) {
        if (dst.dtype() != DType.F32 || (src.dtype() != DType.BF16 && src.dtype() != DType.F16)) {
            throw new IllegalArgumentException("widen from BF16 or F16 into F32, got " + src + " -> " + dst);
        }
        boolean bf16 = src.dtype() == DType.BF16;
        for (long at = 0; at < count; at += WINDOW) {
            int len = (int) Math.min(WINDOW, count - at);
            ShortBuffer in = src.slice(at, len).hostBuffer().asShortBuffer();
            FloatBuffer out = dst.slice(at, len).hostBuffer().asFloatBuffer();
            for (int i = 0; i < len; i++) {
                short h = in.get(i);
                out.put(i, bf16 ? HalfFloats.bf16ToFloat(h) : HalfFloats.f16ToFloat(h));
            }
        }
    }
}
