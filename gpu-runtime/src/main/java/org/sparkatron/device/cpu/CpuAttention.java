package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import org.sparkatron.device.AttentionBlock;
import org.sparkatron.tensor.Tensor;

/**
 * Softmax attention on the CPU in blocks ({@link AttentionBlock}), one (sequence, head) at a time and
 * {@link #TILE} query rows at a time: scores by a GEMM into a {@code tile x kv} scratch block (only the key
 * columns the tile's last row may see), a row-wise softmax over each row's visible prefix that keeps the row's
 * log-sum-exp, then a GEMM with V. The backward recomputes each tile's probabilities from Q, K and the saved
 * log-sum-exp (flash attention's recipe), so no more than one tile of one head's scores ever exists. The
 * unsplit causal attention is the block {@link AttentionBlock#causal}. Grouped-query attention: query head
 * {@code h} reads kv head {@code h / (heads / kvHeads)}, and kv gradients accumulate over the group.
 *
 * <p>Parallel: the (sequence, kv head) units are split into contiguous ranges over {@link #parts} threads
 * ({@link CpuWorkers}); a unit's query heads run in order on one thread, so the kv gradients accumulated over a
 * group and every other result are the same bits for any thread count.
 *
 * <p>Owned by one {@link CpuKernels} (one rank); holds that rank's scratch (two blocks of
 * {@code min(TILE, query rows) x key rows} per thread it runs on, grown to the largest block seen); not thread-safe.
 */
final class CpuAttention {
    /** Query rows whose scores are computed at once. */
    static final int TILE = 64;

    private final CpuKernels kernels;
    private final boolean simd;
    private Tensor[] scores = new Tensor[0];   // per thread (slot): one tile of one head's scores / probabilities
    private Tensor[] dscores = new Tensor[0];  // per thread (slot): one tile's dP / dS

    CpuAttention(CpuKernels kernels, boolean simd) {
        this.kernels = kernels;
        this.simd = simd;
    }

    /**
     * Threads a block of {@code units} (sequence, kv head) pairs runs on: the rank's thread budget
     * ({@link Blas#threads()}), at most one per unit.
     */
    static int parts(long units) {
        return (int) Math.max(1, Math.min(Blas.threads(), units));
    }

    /** Scratch elements a block needs (each of the two kinds, all parts together). */
    static long scratchElements(int qRows, int kvRows, long units) {
        return parts(units) * (long) Math.min(TILE, qRows) * kvRows;
    }

    private int ensureScratch(AttentionBlock blk) {
        int parts = parts((long) blk.batch() * blk.kvHeads());
        long need = (long) Math.min(TILE, blk.qRows()) * blk.kvRows();
        if (scores.length < parts) {
            scores = java.util.Arrays.copyOf(scores, parts);
            dscores = java.util.Arrays.copyOf(dscores, parts);
        }
        for (int p = 0; p < parts; p++) {
            if (need > 0 && (scores[p] == null || scores[p].numel() < need)) {
                int n = Math.toIntExact(need);
                scores[p] = kernels.scratch(1, n, scores[p]);
                dscores[p] = kernels.scratch(1, n, dscores[p]);
            }
        }
        return parts;
    }

    /**
     * Runs {@code unit(bi, g, slot)} for every (sequence, kv head) of the block, one unit a piece on up to
     * {@code parts} threads, {@code slot} the thread's scratch (see {@link CpuWorkers}).
     */
    private static void forUnits(AttentionBlock blk, int parts, UnitBody unit) {
        int units = blk.batch() * blk.kvHeads();
        CpuWorkers.runPieces(parts, units, (u, slot) -> unit.run(u / blk.kvHeads(), u % blk.kvHeads(), slot));
    }

    private interface UnitBody {
        void run(int bi, int g, int part);
    }

    /** The key/value part of a packed QKV tensor: a view starting at the first key column. */
    private static Tensor kvOf(Tensor qkv, int heads, int hd) {
        long off = (long) heads * hd;
        return qkv.slice(off, qkv.numel() - off);
    }

    /** See {@link org.sparkatron.device.Kernels#attentionForward}. */
    void forward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        int width = (heads + 2 * kvHeads) * hd;
        blockForward(out, lse, qkv, width, kvOf(qkv, heads, hd), width, AttentionBlock.causal(b, t, heads, kvHeads, hd));
    }

    /** See {@link org.sparkatron.device.Kernels#attentionBackward}. */
    void backward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads,
                  int hd) {
        int width = (heads + 2 * kvHeads) * hd;
        kernels.zero(dqkv); // a memset: the gradient is accumulated over the tiles
        blockBackward(dqkv, width, kvOf(dqkv, heads, hd), width, dout, out, lse, qkv, width, kvOf(qkv, heads, hd), width,
                AttentionBlock.causal(b, t, heads, kvHeads, hd));
    }

    /** See {@link org.sparkatron.device.Kernels#attentionBlockForward}. */
    void blockForward(Tensor out, Tensor lse, Tensor q, int qld, Tensor kv, int kvld, AttentionBlock blk) {
        int parts = ensureScratch(blk);
        int hd = blk.headDim();
        int heads = blk.heads();
        int c = blk.width();
        int group = heads / blk.kvHeads();
        float scale = (float) (1.0 / Math.sqrt(hd));
        FloatBuffer l = lse.floats();
        FloatBuffer o = out.floats();
        forUnits(blk, parts, (bi, g, part) -> {
            Tensor sc = scores[part];
            for (int h = g * group; h < (g + 1) * group; h++) {
                long k = (long) (bi * blk.kvSeq() + blk.kvFirst()) * kvld + (long) g * hd;
                long v = k + (long) blk.kvHeads() * hd;
                for (int i0 = 0; i0 < blk.qRows(); i0 += TILE) {
                    int rows = Math.min(TILE, blk.qRows() - i0);
                    int cols = blk.visible(i0 + rows - 1); // visibility grows with the row: the tile's last sees most
                    long qRow = (long) bi * blk.qSeq() + blk.qFirst() + i0;
                    long oOff = qRow * c + (long) h * hd;
                    int lseBase = (bi * heads + h) * blk.qSeq() + blk.qFirst() + i0;
                    if (cols == 0) { // no row of the tile sees a key
                        for (int i = 0; i < rows; i++) {
                            l.put(lseBase + i, Float.NEGATIVE_INFINITY);
                            for (int d = 0; d < hd; d++) {
                                o.put((int) (oOff + (long) i * c + d), 0f);
                            }
                        }
                        continue;
                    }
                    Blas.sgemm(parts > 1 ? 1 : Blas.threads(), false, true, rows, cols, hd, scale, q, qRow * qld + (long) h * hd, qld, kv, k, kvld, 0f, sc, 0,
                            cols);
                    for (int i = 0; i < rows; i++) {
                        l.put(lseBase + i, softmaxRow(sc, i * cols, blk.visible(i0 + i), cols));
                    }
                    Blas.sgemm(parts > 1 ? 1 : Blas.threads(), false, false, rows, hd, cols, 1f, sc, 0, cols, kv, v, kvld, 0f, out, oOff, c);
                }
            }
        });
    }

    /**
     * Row {@code [rb, rb + cols)} of the scores: softmax over its first {@code vis} entries in place, zeros after;
     * returns the log-sum-exp ({@code -inf}, and a zero row, when nothing is visible).
     */
    private float softmaxRow(Tensor scores, int rb, int vis, int cols) {
        FloatBuffer p = scores.floats();
        float max;
        double sum;
        if (vis == 0) {
            max = Float.NEGATIVE_INFINITY;
            sum = 1;
        } else if (simd) {
            ByteBuffer pb = scores.hostBuffer();
            max = SimdKernels.max(pb, rb, vis);
            sum = SimdKernels.expShiftSum(pb, rb, vis, max, true);
            SimdKernels.scale(pb, rb, vis, (float) (1.0 / sum));
        } else {
            max = Float.NEGATIVE_INFINITY;
            for (int j = 0; j < vis; j++) {
                max = Math.max(max, p.get(rb + j));
            }
            sum = 0;
            for (int j = 0; j < vis; j++) {
                float e = (float) Math.exp(p.get(rb + j) - max);
                p.put(rb + j, e);
                sum += e;
            }
            float inv = (float) (1.0 / sum);
            for (int j = 0; j < vis; j++) {
                p.put(rb + j, p.get(rb + j) * inv);
            }
        }
        zeroRange(p, rb + vis, rb + cols);
        return (float) (max + Math.log(sum));
    }

    /** See {@link org.sparkatron.device.Kernels#attentionBlockBackward}. */
    void blockBackward(Tensor dq, int dqld, Tensor dkv, int dkvld, Tensor dout, Tensor out, Tensor lse, Tensor q, int qld,
                       Tensor kv, int kvld, AttentionBlock blk) {
        if (blk.qRows() == 0 || blk.kvRows() == 0) {
            return; // no query sees a key: nothing to accumulate
        }
        int parts = ensureScratch(blk);
        int hd = blk.headDim();
        int heads = blk.heads();
        int c = blk.width();
        int group = heads / blk.kvHeads();
        float scale = (float) (1.0 / Math.sqrt(hd));
        FloatBuffer l = lse.floats();
        FloatBuffer o = out.floats();
        FloatBuffer d = dout.floats();
        ByteBuffer doutBuf = dout.hostBuffer();
        ByteBuffer outBuf = out.hostBuffer();
        forUnits(blk, parts, (bi, g, part) -> {
            Tensor sc = scores[part];
            Tensor dsc = dscores[part];
            FloatBuffer p = sc.floats();
            FloatBuffer dp = dsc.floats();
            ByteBuffer pb = sc.hostBuffer();
            ByteBuffer dpb = dsc.hostBuffer();
            for (int h = g * group; h < (g + 1) * group; h++) { // in order: the group's dK, dV sum over its heads
                long kvRow0 = (long) bi * blk.kvSeq() + blk.kvFirst();
                long k = kvRow0 * kvld + (long) g * hd;
                long v = k + (long) blk.kvHeads() * hd;
                long dk = kvRow0 * dkvld + (long) g * hd;
                long dv = dk + (long) blk.kvHeads() * hd;
                for (int i0 = 0; i0 < blk.qRows(); i0 += TILE) {
                    int rows = Math.min(TILE, blk.qRows() - i0);
                    int cols = blk.visible(i0 + rows - 1);
                    if (cols == 0) {
                        continue; // no query row of the tile sees a key: no gradient flows through this block
                    }
                    long qRow = (long) bi * blk.qSeq() + blk.qFirst() + i0;
                    long qOff = qRow * qld + (long) h * hd;
                    long oh = qRow * c + (long) h * hd;
                    int lseBase = (bi * heads + h) * blk.qSeq() + blk.qFirst() + i0;
                    // P = exp(scale * Q K^T - lse) on each row's visible prefix, 0 elsewhere
                    Blas.sgemm(parts > 1 ? 1 : Blas.threads(), false, true, rows, cols, hd, scale, q, qOff, qld, kv, k, kvld, 0f, sc, 0, cols);
                    for (int i = 0; i < rows; i++) {
                        int rb = i * cols;
                        int vis = blk.visible(i0 + i);
                        float li = l.get(lseBase + i);
                        if (simd) {
                            SimdKernels.expShift(pb, rb, vis, li);
                        } else {
                            for (int j = 0; j < vis; j++) {
                                p.put(rb + j, (float) Math.exp(p.get(rb + j) - li));
                            }
                        }
                        zeroRange(p, rb + vis, rb + cols);
                    }
                    // dV += P^T dO ; dP = dO V^T
                    Blas.sgemm(parts > 1 ? 1 : Blas.threads(), true, false, cols, hd, rows, 1f, sc, 0, cols, dout, oh, c, 1f, dkv, dv, dkvld);
                    Blas.sgemm(parts > 1 ? 1 : Blas.threads(), false, true, rows, cols, hd, 1f, dout, oh, c, kv, v, kvld, 0f, dsc, 0, cols);
                    // dS = P * (dP - rowsum(dO * O))
                    for (int i = 0; i < rows; i++) {
                        long ob = oh + (long) i * c;
                        int rb = i * cols;
                        int vis = blk.visible(i0 + i);
                        if (simd) {
                            float dif = (float) SimdKernels.dot(doutBuf, (int) ob, outBuf, (int) ob, hd);
                            SimdKernels.softmaxGrad(pb, dpb, rb, vis, dif);
                        } else {
                            double di = 0;
                            for (int j = 0; j < hd; j++) {
                                di += d.get((int) (ob + j)) * o.get((int) (ob + j));
                            }
                            float dif = (float) di;
                            for (int j = 0; j < vis; j++) {
                                dp.put(rb + j, p.get(rb + j) * (dp.get(rb + j) - dif));
                            }
                        }
                        zeroRange(dp, rb + vis, rb + cols);
                    }
                    // dQ += scale * dS K ; dK += scale * dS^T Q
                    Blas.sgemm(parts > 1 ? 1 : Blas.threads(), false, false, rows, hd, cols, scale, dsc, 0, cols, kv, k, kvld, 1f, dq,
                            qRow * dqld + (long) h * hd, dqld);
                    Blas.sgemm(parts > 1 ? 1 : Blas.threads(), true, false, cols, hd, rows, scale, dsc, 0, cols, q, qOff, qld, 1f, dkv, dk, dkvld);
                }
            }
        });
    }

    private static final float[] ZEROS = new float[1024]; // read-only: the source of bulk zero fills

    /** Zeroes elements [from, to) of a row (the masked tail of a tile's row) by bulk copies, not one put each. */
    private static void zeroRange(FloatBuffer f, int from, int to) {
        for (int at = from; at < to; at += ZEROS.length) {
            f.put(at, ZEROS, 0, Math.min(ZEROS.length, to - at));
        }
    }

    /** See {@link org.sparkatron.device.Kernels#attentionMerge}. Coefficients in double, values stored in fp32. */
    static void merge(Tensor out, Tensor lse, Tensor partOut, Tensor partLse, AttentionBlock blk) {
        FloatBuffer o = out.floats();
        FloatBuffer l = lse.floats();
        FloatBuffer po = partOut.floats();
        FloatBuffer pl = partLse.floats();
        int hd = blk.headDim();
        int c = blk.width();
        for (int bi = 0; bi < blk.batch(); bi++) {
            for (int h = 0; h < blk.heads(); h++) {
                int lseBase = (bi * blk.heads() + h) * blk.qSeq() + blk.qFirst();
                for (int i = 0; i < blk.qRows(); i++) {
                    float a = l.get(lseBase + i);
                    float b = pl.get(lseBase + i);
                    if (b == Float.NEGATIVE_INFINITY) {
                        continue; // the partial result saw no key
                    }
                    int row = (int) (((long) bi * blk.qSeq() + blk.qFirst() + i) * c + (long) h * hd);
                    double m = Math.max(a, b);
                    double merged = m + Math.log(Math.exp(a - m) + Math.exp(b - m));
                    double wa = Math.exp(a - merged); // 0 when the accumulated side saw nothing (a = -inf)
                    double wb = Math.exp(b - merged);
                    for (int j = 0; j < hd; j++) {
                        float acc = a == Float.NEGATIVE_INFINITY ? 0f : o.get(row + j);
                        o.put(row + j, (float) (wa * acc + wb * po.get(row + j)));
                    }
                    l.put(lseBase + i, (float) merged);
                }
            }
        }
    }
}
