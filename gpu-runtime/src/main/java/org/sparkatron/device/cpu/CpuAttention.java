package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Causal softmax attention on the CPU, one (sequence, head) at a time: scores by a GEMM into a
 * {@code T x T} scratch block, a row-wise softmax that keeps each row's log-sum-exp, then a GEMM with V.
 * The backward recomputes each head's probabilities from Q, K and the saved log-sum-exp (flash
 * attention's recipe), so no more than one head's scores ever exist. Grouped-query attention: query head
 * {@code h} reads kv head {@code h / (heads / kvHeads)}, and kv gradients accumulate over the group.
 *
 * <p>Owned by one {@link CpuKernels} (one rank); holds that rank's scratch; not thread-safe.
 */
final class CpuAttention {
    private final CpuKernels kernels;
    private final boolean simd;
    private Tensor scores;   // [T, T] one head's scores / probabilities
    private Tensor dscores;  // [T, T] one head's dP / dS

    CpuAttention(CpuKernels kernels, boolean simd) {
        this.kernels = kernels;
        this.simd = simd;
    }

    private void ensureScratch(int t) {
        if (scores == null || scores.numel() < (long) t * t) {
            scores = kernels.scratch(t, t, scores);
            dscores = kernels.scratch(t, t, dscores);
        }
    }

    /** See {@link org.sparkatron.device.Kernels#attentionForward}. */
    void forward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        ensureScratch(t);
        int width = (heads + 2 * kvHeads) * hd;
        int c = heads * hd;
        int group = heads / kvHeads;
        float scale = (float) (1.0 / Math.sqrt(hd));
        FloatBuffer p = scores.floats();
        FloatBuffer l = lse.floats();
        for (int bi = 0; bi < b; bi++) {
            long row0 = (long) bi * t * width;
            for (int h = 0; h < heads; h++) {
                int g = h / group;
                long q = row0 + (long) h * hd;
                long k = row0 + (long) (heads + g) * hd;
                long v = row0 + (long) (heads + kvHeads + g) * hd;
                Blas.sgemm(false, true, t, t, hd, scale, qkv, q, width, qkv, k, width, 0f, scores, 0, t);
                int lseBase = (bi * heads + h) * t;
                ByteBuffer pb = scores.hostBuffer();
                for (int i = 0; i < t; i++) {
                    int rb = i * t;
                    float max;
                    double sum;
                    if (simd) {
                        max = SimdKernels.max(pb, rb, i + 1);
                        sum = SimdKernels.expShiftSum(pb, rb, i + 1, max, true);
                        SimdKernels.scale(pb, rb, i + 1, (float) (1.0 / sum));
                    } else {
                        max = Float.NEGATIVE_INFINITY;
                        for (int j = 0; j <= i; j++) {
                            max = Math.max(max, p.get(rb + j));
                        }
                        sum = 0;
                        for (int j = 0; j <= i; j++) {
                            float e = (float) Math.exp(p.get(rb + j) - max);
                            p.put(rb + j, e);
                            sum += e;
                        }
                        float inv = (float) (1.0 / sum);
                        for (int j = 0; j <= i; j++) {
                            p.put(rb + j, p.get(rb + j) * inv);
                        }
                    }
                    for (int j = i + 1; j < t; j++) {
                        p.put(rb + j, 0f);
                    }
                    l.put(lseBase + i, (float) (max + Math.log(sum)));
                }
                Blas.sgemm(false, false, t, hd, t, 1f, scores, 0, t, qkv, v, width, 0f, out,
                        (long) bi * t * c + (long) h * hd, c);
            }
        }
    }

    /** See {@link org.sparkatron.device.Kernels#attentionBackward}. */
    void backward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads,
                  int hd) {
        ensureScratch(t);
        int width = (heads + 2 * kvHeads) * hd;
        int c = heads * hd;
        int group = heads / kvHeads;
        float scale = (float) (1.0 / Math.sqrt(hd));
        FloatBuffer p = scores.floats();
        FloatBuffer dp = dscores.floats();
        FloatBuffer l = lse.floats();
        FloatBuffer o = out.floats();
        FloatBuffer d = dout.floats();
        ByteBuffer doutBuf = dout.hostBuffer();
        ByteBuffer outBuf = out.hostBuffer();
        kernels.fill(dqkv, 0f);
        for (int bi = 0; bi < b; bi++) {
            long row0 = (long) bi * t * width;
            long orow0 = (long) bi * t * c;
            for (int h = 0; h < heads; h++) {
                int g = h / group;
                long q = row0 + (long) h * hd;
                long k = row0 + (long) (heads + g) * hd;
                long v = row0 + (long) (heads + kvHeads + g) * hd;
                long oh = orow0 + (long) h * hd;
                // P = exp(scale * Q K^T - lse), causal
                Blas.sgemm(false, true, t, t, hd, scale, qkv, q, width, qkv, k, width, 0f, scores, 0, t);
                int lseBase = (bi * heads + h) * t;
                ByteBuffer pb = scores.hostBuffer();
                for (int i = 0; i < t; i++) {
                    int rb = i * t;
                    float li = l.get(lseBase + i);
                    if (simd) {
                        SimdKernels.expShift(pb, rb, i + 1, li);
                    } else {
                        for (int j = 0; j <= i; j++) {
                            p.put(rb + j, (float) Math.exp(p.get(rb + j) - li));
                        }
                    }
                    for (int j = i + 1; j < t; j++) {
                        p.put(rb + j, 0f);
                    }
                }
                // dV += P^T dO ; dP = dO V^T
                Blas.sgemm(true, false, t, hd, t, 1f, scores, 0, t, dout, oh, c, 1f, dqkv, v, width);
                Blas.sgemm(false, true, t, t, hd, 1f, dout, oh, c, qkv, v, width, 0f, dscores, 0, t);
                // dS = P * (dP - rowsum(dO * O))
                ByteBuffer dpb = dscores.hostBuffer();
                for (int i = 0; i < t; i++) {
                    long ob = oh + (long) i * c;
                    int rb = i * t;
                    if (simd) {
                        float dif = (float) SimdKernels.dot(doutBuf, (int) ob, outBuf, (int) ob, hd);
                        SimdKernels.softmaxGrad(pb, dpb, rb, i + 1, dif);
                    } else {
                        double di = 0;
                        for (int j = 0; j < hd; j++) {
                            di += d.get((int) (ob + j)) * o.get((int) (ob + j));
                        }
                        float dif = (float) di;
                        for (int j = 0; j <= i; j++) {
                            dp.put(rb + j, p.get(rb + j) * (dp.get(rb + j) - dif));
                        }
                    }
                    for (int j = i + 1; j < t; j++) {
                        dp.put(rb + j, 0f);
                    }
                }
                // dQ = scale * dS K ; dK += scale * dS^T Q
                Blas.sgemm(false, false, t, hd, t, scale, dscores, 0, t, qkv, k, width, 0f, dqkv, q, width);
                Blas.sgemm(true, false, t, hd, t, scale, dscores, 0, t, qkv, q, width, 1f, dqkv, k, width);
            }
        }
    }
}
