package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import org.sparkatron.device.AttentionBlock;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.MoeKernels;
import org.sparkatron.parallel.DropoutRng;
import org.sparkatron.precision.Fp8Format;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * CPU kernels: GEMMs through OpenBLAS on off-heap memory, everything else in Java loops over direct buffers
 * (Vector API ones in {@link SimdKernels} and {@link SimdNorms} when the module is present), accumulating
 * reductions in double where a row sum decides accuracy. The norms are {@link CpuNorms}, attention
 * {@link CpuAttention}, the cross-entropy rows {@link CpuCrossEntropyRows}, the flat-block utilities (AdamW,
 * sums, scale, fill, 16-bit rounding) {@link CpuFlatKernels}.
 *
 * <p>One instance per rank: it owns the attention scratch ({@link CpuAttention}: two {@code T x T} blocks,
 * one head at a time), taken from its {@link CpuDevice} (or host memory for kernels made on their own, as
 * kernel tests do). Every call runs to completion before returning. Not thread-safe.
 */
public final class CpuKernels implements Kernels {
    private static final float GELU_SCALE = (float) Math.sqrt(2.0 / Math.PI);

    private final boolean simd;
    private final Device device; // scratch comes from here; null: host memory
    private final CpuAttention attention;

    /**
     * Kernels using the Vector API when the JVM has it (and the system property {@code sparkatron.simd}
     * is not {@code false}), plain loops otherwise.
     */
    public CpuKernels() {
        this(simdByDefault());
    }

    /** Explicit choice; {@code simd = true} requires the {@code jdk.incubator.vector} module. */
    public CpuKernels(boolean simd) {
        this(simd, null);
    }

    CpuKernels(boolean simd, Device device) {
        if (simd && !vectorModulePresent()) {
            throw new IllegalStateException("SIMD kernels need the JVM option --add-modules=jdk.incubator.vector");
        }
        this.simd = simd;
        this.device = device;
        this.attention = new CpuAttention(this, simd);
    }

    /** The Vector API is present and not turned off with {@code -Dsparkatron.simd=false}. */
    static boolean simdByDefault() {
        return vectorModulePresent() && !"false".equals(System.getProperty("sparkatron.simd"));
    }

    /**
     * True when the incubator module is in the JVM. Checked here, not in {@link SimdKernels}: calling any
     * method of that class initialises its Vector API constants, which fails without the module.
     */
    static boolean vectorModulePresent() {
        return ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent();
    }

    /** Kernel scratch: from the device (a workspace block) or, for stand-alone kernels, host memory. */
    Tensor scratch(int rows, int cols, Tensor previous) {
        if (device == null) {
            return Tensor.allocateHost(DType.F32, rows, cols);
        }
        device.release(previous);
        return device.allocate(MemoryKind.WORKSPACE, DType.F32, rows, cols);
    }

    /**
     * Elements of each of the attention's two kinds of scratch for a block of {@code qRows} query rows against
     * {@code kvRows} key rows over {@code units} (sequence, kv head) pairs: one block per thread the attention
     * runs on (the blocks grow to the largest block a rank computes).
     */
    public static long attentionScratchElements(int qRows, int kvRows, long units) {
        return CpuAttention.scratchElements(qRows, kvRows, units);
    }

    /** Whether the Vector API loops are in use. */
    public boolean simd() {
        return simd;
    }

    @Override
    public void linearForward(Tensor out, Tensor x, Tensor w, Tensor bias, int n, int in, int outF) {
        float beta = 0f;
        if (bias != null) { // every row starts as the bias; the GEMM adds onto it (beta 1)
            FloatBuffer o = out.floats();
            float[] b = new float[outF];
            bias.floats().get(0, b);
            for (int r = 0; r < n; r++) {
                o.put(r * outF, b); // bulk copy
            }
            beta = 1f;
        }
        Blas.sgemm(false, true, n, outF, in, 1f, x, 0, in, w, 0, in, beta, out, 0, outF);
    }

    @Override
    public void linearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor x,
                               Tensor w, int n, int in, int outF) {
        int threads = Blas.threads();
        if (dx != null && threads >= 2 && 2L * n * in * outF >= Blas.SMALL_GEMM_FLOPS) {
            // dx and dw side by side, each on half the threads: two whole GEMMs block better than two halves of
            // each (measured: 1024 x 384 -> 1152 126-129 vs 132-152 GFLOP/s, docs/benchmarks.md); the caller takes
            // dx, a helper dw, and dw too falls to the caller if no helper has taken it by then (CpuWorkers)
            int half = threads / 2;
            CpuWorkers.runPieces(2, 2, (p, slot) -> {
                if (p == 0) {
                    Blas.sgemm(half, false, false, n, in, outF, 1f, dout, 0, outF, w, 0, in, accumulateDx ? 1f : 0f, dx, 0, in);
                } else {
                    Blas.sgemm(half, true, false, outF, in, n, 1f, dout, 0, outF, x, 0, in, 1f, dw, 0, in);
                }
            });
        } else {
            if (dx != null) {
                Blas.sgemm(false, false, n, in, outF, 1f, dout, 0, outF, w, 0, in, accumulateDx ? 1f : 0f, dx, 0, in);
            }
            Blas.sgemm(true, false, outF, in, n, 1f, dout, 0, outF, x, 0, in, 1f, dw, 0, in);
        }
        if (dbias != null) {
            biasGradient(dbias, dout, n, outF);
        }
    }

    /** {@code db += sum over rows of dout[n, outF]}, accumulated in double. */
    void biasGradient(Tensor dbias, Tensor dout, int n, int outF) {
        FloatBuffer d = dout.floats();
        FloatBuffer db = dbias.floats();
        CpuWorkers.forRows(outF, n, (j0, j1) -> { // columns: each still summed over the rows in row order
            double[] acc = new double[j1 - j0];
            if (simd) {
                SimdNorms.columnSums(dout.hostBuffer(), n, outF, j0, j1, acc);
            } else for (int r = 0; r < n; r++) {
                int base = r * outF;
                for (int j = j0; j < j1; j++) {
                    acc[j - j0] += d.get(base + j);
                }
            }
            for (int j = j0; j < j1; j++) {
                db.put(j, (float) (db.get(j) + acc[j - j0]));
            }
        });
    }

    @Override
    public void embeddingForward(Tensor out, Tensor tokens, Tensor table, int vocabStart, int n, int c) {
        FloatBuffer o = out.floats();
        FloatBuffer e = table.floats();
        IntBuffer tok = tokens.ints();
        int held = table.dim(0);
        float[] zeros = new float[c];
        for (int r = 0; r < n; r++) {
            int id = tok.get(r) - vocabStart;
            if (id >= 0 && id < held) {
                o.put(r * c, e, id * c, c);
            } else {
                o.put(r * c, zeros); // another rank's id (vocab-parallel): its rank contributes the row
            }
        }
    }

    @Override
    public void embeddingBackward(Tensor dtable, Tensor dout, Tensor tokens, int vocabStart, int n, int c) {
        FloatBuffer d = dout.floats();
        FloatBuffer g = dtable.floats();
        IntBuffer tok = tokens.ints();
        int held = dtable.dim(0);
        for (int r = 0; r < n; r++) {
            int id = tok.get(r) - vocabStart;
            if (id < 0 || id >= held) {
                continue;
            }
            addRow(g, id * c, d, r * c, c);
        }
    }

    @Override
    public void addPositions(Tensor x, Tensor wpe, Tensor positions, int firstRow, int rows, int t, int c) {
        FloatBuffer o = x.floats();
        FloatBuffer p = wpe.floats();
        IntBuffer pos = positions == null ? null : positions.ints();
        for (int i = 0; i < rows; i++) {
            addRow(o, i * c, p, position(pos, firstRow + i, t) * c, c);
        }
    }

    @Override
    public void positionsBackward(Tensor dwpe, Tensor dx, Tensor positions, int firstRow, int rows, int t, int c) {
        FloatBuffer d = dx.floats();
        FloatBuffer g = dwpe.floats();
        IntBuffer pos = positions == null ? null : positions.ints();
        for (int i = 0; i < rows; i++) {
            addRow(g, position(pos, firstRow + i, t) * c, d, i * c, c);
        }
    }

    /** The position of token row {@code r} of sequences of {@code t} rows: {@code positions[r % t]}, or r % t. */
    private static int position(IntBuffer positions, int r, int t) {
        return positions == null ? r % t : positions.get(r % t);
    }

    /** {@code dst[dstOff, +c) += src[srcOff, +c)}. */
    private static void addRow(FloatBuffer dst, int dstOff, FloatBuffer src, int srcOff, int c) {
        for (int j = 0; j < c; j++) {
            dst.put(dstOff + j, dst.get(dstOff + j) + src.get(srcOff + j));
        }
    }

    @Override
    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, int n, int c,
                                 float eps) {
        CpuNorms.layerNormForward(simd, out, mean, rstd, x, w, b, n, c, eps);
    }

    @Override
    public void layerNormBackward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean,
                                  Tensor rstd, int n, int c) {
        CpuNorms.layerNormBackward(simd, dx, dw, db, dout, x, w, mean, rstd, n, c);
    }

    @Override
    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor w, int n, int c, float eps) {
        CpuNorms.rmsNormForward(simd, out, rstd, x, w, n, c, eps);
    }

    @Override
    public void rmsNormBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, int n, int c) {
        CpuNorms.rmsNormBackward(simd, dx, dw, dout, x, w, rstd, n, c);
    }

    @Override
    public void geluForward(Tensor out, Tensor x, long count) {
        int n = Math.toIntExact(count);
        CpuWorkers.forRange(n, 1, (from, to) -> {
            if (simd) {
                SimdKernels.geluForward(out.hostBuffer(), x.hostBuffer(), from, to);
                return;
            }
            FloatBuffer o = out.floats();
            FloatBuffer xs = x.floats();
            for (int i = from; i < to; i++) {
                float v = xs.get(i);
                float u = GELU_SCALE * (v + 0.044715f * v * v * v);
                o.put(i, 0.5f * v * (1f + (float) Math.tanh(u)));
            }
        });
    }

    @Override
    public void geluBackward(Tensor dx, Tensor dout, Tensor x, long count) {
        int n = Math.toIntExact(count);
        CpuWorkers.forRange(n, 2, (from, to) -> {
            if (simd) {
                SimdKernels.geluBackward(dx.hostBuffer(), dout.hostBuffer(), x.hostBuffer(), from, to);
                return;
            }
            FloatBuffer dxs = dx.floats();
            FloatBuffer d = dout.floats();
            FloatBuffer xs = x.floats();
            for (int i = from; i < to; i++) {
                float v = xs.get(i);
                float u = GELU_SCALE * (v + 0.044715f * v * v * v);
                float th = (float) Math.tanh(u);
                float sech2 = 1f - th * th;
                float grad = 0.5f * (1f + th) + 0.5f * v * sech2 * GELU_SCALE * (1f + 3f * 0.044715f * v * v);
                dxs.put(i, grad * d.get(i));
            }
        });
    }

    @Override
    public void swigluForward(Tensor out, Tensor gateUp, int n, int f) {
        FloatBuffer o = out.floats();
        FloatBuffer gu = gateUp.floats();
        for (int r = 0; r < n; r++) {
            int ib = r * 2 * f;
            int ob = r * f;
            for (int j = 0; j < f; j++) {
                float g = gu.get(ib + j);
                float silu = g / (1f + (float) Math.exp(-g));
                o.put(ob + j, silu * gu.get(ib + f + j));
            }
        }
    }

    @Override
    public void swigluBackward(Tensor dGateUp, Tensor dout, Tensor gateUp, int n, int f) {
        FloatBuffer dgu = dGateUp.floats();
        FloatBuffer d = dout.floats();
        FloatBuffer gu = gateUp.floats();
        for (int r = 0; r < n; r++) {
            int ib = r * 2 * f;
            int ob = r * f;
            for (int j = 0; j < f; j++) {
                float g = gu.get(ib + j);
                float u = gu.get(ib + f + j);
                float sig = 1f / (1f + (float) Math.exp(-g));
                float silu = g * sig;
                float dy = d.get(ob + j);
                dgu.put(ib + j, dy * u * sig * (1f + g * (1f - sig)));
                dgu.put(ib + f + j, dy * silu);
            }
        }
    }

    @Override
    public void add(Tensor out, Tensor a, Tensor b, long count) {
        CpuWorkers.forRange(Math.toIntExact(count), 1, (from, to) -> {
            if (simd) {
                SimdKernels.add(out.hostBuffer(), a.hostBuffer(), b.hostBuffer(), from, to);
                return;
            }
            FloatBuffer o = out.floats();
            FloatBuffer as = a.floats();
            FloatBuffer bs = b.floats();
            for (int i = from; i < to; i++) {
                o.put(i, as.get(i) + bs.get(i));
            }
        });
    }

    @Override
    public void rope(Tensor qkv, Tensor cos, Tensor sin, Tensor positions, int b, int t, int heads, int kvHeads, int hd,
                     boolean inverse) {
        FloatBuffer q = qkv.floats();
        FloatBuffer cs = cos.floats();
        FloatBuffer sn = sin.floats();
        IntBuffer positionTable = positions == null ? null : positions.ints();
        int half = hd / 2;
        int width = (heads + 2 * kvHeads) * hd;
        float sign = inverse ? -1f : 1f;
        for (int r = 0; r < b * t; r++) {
            int pos = position(positionTable, r, t);
            // q heads then k heads are contiguous at the start of the row
            for (int h = 0; h < heads + kvHeads; h++) {
                int base = r * width + h * hd;
                for (int j = 0; j < half; j++) {
                    float c = cs.get(pos * half + j);
                    float s = sign * sn.get(pos * half + j);
                    float x1 = q.get(base + j);
                    float x2 = q.get(base + half + j);
                    q.put(base + j, x1 * c - x2 * s);
                    q.put(base + half + j, x2 * c + x1 * s);
                }
            }
        }
    }

    @Override
    public void attentionForward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        attention.forward(out, lse, qkv, b, t, heads, kvHeads, hd);
    }

    @Override
    public void attentionBackward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t,
                                  int heads, int kvHeads, int hd) {
        attention.backward(dqkv, dout, out, lse, qkv, b, t, heads, kvHeads, hd);
    }

    @Override
    public void attentionBlockForward(Tensor out, Tensor lse, Tensor q, int qld, Tensor kv, int kvld, AttentionBlock blk) {
        attention.blockForward(out, lse, q, qld, kv, kvld, blk);
    }

    @Override
    public void attentionBlockBackward(Tensor dq, int dqld, Tensor dkv, int dkvld, Tensor dout, Tensor out, Tensor lse,
                                       Tensor q, int qld, Tensor kv, int kvld, AttentionBlock blk) {
        attention.blockBackward(dq, dqld, dkv, dkvld, dout, out, lse, q, qld, kv, kvld, blk);
    }

    @Override
    public void attentionMerge(Tensor out, Tensor lse, Tensor partOut, Tensor partLse, AttentionBlock blk) {
        CpuAttention.merge(out, lse, partOut, partLse, blk);
    }

    @Override
    public void crossEntropyMax(Tensor logits, Tensor max, int rows, int valid, int ld) {
        CpuCrossEntropyRows ce = new CpuCrossEntropyRows(simd, logits, max, null, null, null, 0, 0, valid, ld);
        CpuWorkers.forRows(rows, valid, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                ce.max(r);
            }
        });
    }

    @Override
    public void crossEntropySums(Tensor logits, Tensor max, Tensor sums, Tensor targets, int vocabStart, int vocab,
                                 int rows, int valid, int ld, boolean storeExp) {
        CpuCrossEntropyRows ce = new CpuCrossEntropyRows(simd, logits, max, sums, null, targets, vocabStart, vocab, valid, ld);
        CpuWorkers.forRows(rows, valid, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                ce.sums(r, storeExp);
            }
        });
    }

    @Override
    public void crossEntropyFinish(Tensor logits, Tensor max, Tensor sums, Tensor losses, Tensor targets, int vocabStart,
                                   int rows, int valid, int ld, boolean backward, float gradScale) {
        CpuCrossEntropyRows ce = new CpuCrossEntropyRows(simd, logits, max, sums, losses, targets, vocabStart, 0, valid, ld);
        CpuWorkers.forRows(rows, backward ? valid : 1, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                ce.finish(r, backward, gradScale);
            }
        });
    }

    /** Row by row: the row's logits stay in this core's cache between the three steps. Same bits as the three calls. */
    @Override
    public void crossEntropy(Tensor logits, Tensor max, Tensor sums, Tensor losses, Tensor targets, int vocab, int rows,
                             int valid, int ld, boolean backward, float gradScale) {
        CpuCrossEntropyRows ce = new CpuCrossEntropyRows(simd, logits, max, sums, losses, targets, 0, vocab, valid, ld);
        CpuWorkers.forRows(rows, valid, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                ce.max(r);
                ce.sums(r, backward);
                ce.finish(r, backward, gradScale);
            }
        });
    }

    // ---- optimizer and gradient utilities over flat blocks: CpuFlatKernels ----

    @Override
    public void adamw(Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float beta1, float beta2,
                      float eps, float decay, float stepSize, float invSqrtBc2) {
        CpuFlatKernels.adamw(simd, params, grads, m, v, from, count, 1f, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
    }

    @Override
    public void adamwScaled(Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float gradScale,
                            float beta1, float beta2, float eps, float decay, float stepSize, float invSqrtBc2) {
        // one pass over the gradients instead of scale() then adamw(): the clipping pass read and wrote all of them
        CpuFlatKernels.adamw(simd, params, grads, m, v, from, count, gradScale, beta1, beta2, eps, decay, stepSize,
                invSqrtBc2);
    }

    @Override
    public void sumOfSquares(Tensor x, Tensor acc, int slot) {
        CpuFlatKernels.sumOfSquares(simd, x, acc, slot);
    }

    @Override
    public void sum(Tensor x, long count, Tensor acc, int slot, double scale) {
        CpuFlatKernels.sum(x, count, acc, slot, scale);
    }

    @Override
    public void scale(Tensor x, float factor) {
        CpuFlatKernels.scale(simd, x, factor);
    }

    @Override
    public void fill(Tensor x, float value) {
        CpuFlatKernels.fill(x, value);
    }

    @Override
    public void zero(Tensor x) {
        CpuFlatKernels.zero(x);
    }

    // ---- elementwise pieces of the layers ----

    @Override
    public void addBias(Tensor out, Tensor bias, int rows, int cols) {
        if (simd) {
            ByteBuffer o = out.hostBuffer();
            ByteBuffer b = bias.hostBuffer();
            CpuWorkers.forRows(rows, cols, (r0, r1) -> {
                for (int r = r0; r < r1; r++) {
                    SimdKernels.addToRow(o, r * cols, b, cols);
                }
            });
            return;
        }
        float[] b = new float[cols];
        bias.floats().get(0, b);
        CpuWorkers.forRows(rows, cols, (r0, r1) -> {
            FloatBuffer o = out.floats();
            for (int r = r0; r < r1; r++) {
                int base = r * cols;
                for (int j = 0; j < cols; j++) {
                    o.put(base + j, o.get(base + j) + b[j]);
                }
            }
        });
    }

    @Override
    public void dropout(Tensor x, float p, long base, long firstRow, int rows, int cols) {
        if (p == 0f) {
            return;
        }
        float scale = 1f / (1f - p);
        FloatBuffer v = x.floats();
        for (int i = 0; i < rows; i++) {
            long row = (firstRow + i) * cols;
            for (int j = 0; j < cols; j++) {
                int at = i * cols + j;
                v.put(at, DropoutRng.keep(base, row + j, p) ? v.get(at) * scale : 0f);
            }
        }
    }

    @Override
    public void round(Tensor dst, Tensor src, long count, DType format) {
        CpuFlatKernels.round(dst, src, count, format);
    }

    @Override
    public void widen(Tensor dst, Tensor src, long count) {
        CpuFlatKernels.widen(dst, src, count);
    }

    // ---- mixture of experts: CpuMoeKernels (stateless, so one per kernel set costs nothing) ----

    private final CpuMoeKernels moe = new CpuMoeKernels();

    @Override
    public boolean hasMoeKernels() {
        return true;
    }

    @Override
    public MoeKernels moe() {
        return moe;
    }

    // ---- FP8 (CpuFp8) ----

    @Override
    public boolean supportsFp8() {
        return true;
    }

    @Override
    public void amax(Tensor x, long count, Tensor amax, int slot) {
        CpuFp8.amax(x, count, amax, slot);
    }

    @Override
    public void castToFp8(Tensor dst, Tensor src, long count, Fp8Format format, Tensor scale, int slot, Tensor amaxOut,
                          int amaxSlot) {
        CpuFp8.castToFp8(dst, src, count, format, scale, slot, amaxOut, amaxSlot);
    }

    @Override
    public void fp8ScaleFromAmax(Tensor amax, Tensor scale, Tensor scaleInv, int from, int count, float fp8Max) {
        CpuFp8.scaleFromAmax(amax, scale, scaleInv, from, count, fp8Max);
    }

    @Override
    public void fp8DelayedScaling(Tensor history, Tensor scale, Tensor scaleInv, int len, int slots, int from, int count,
                                  boolean useMax, float scaledMax) {
        CpuFp8.delayedScaling(history, scale, scaleInv, len, slots, from, count, useMax, scaledMax);
    }

    @Override
    public void fp8LinearForward(Tensor out, Tensor x8, Tensor w8, Tensor scaleInv, int xSlot, int wSlot, Tensor bias, int n,
                                 int in, int outF) {
        CpuFp8.linearForward(out, x8, w8, scaleInv, xSlot, wSlot, bias, n, in, outF);
    }

    @Override
    public void fp8LinearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor dy8, Tensor x8,
                                  Tensor w8, Tensor scaleInv, int dySlot, int xSlot, int wSlot, int n, int in, int outF) {
        CpuFp8.linearBackward(this, dx, accumulateDx, dw, dbias, dout, dy8, x8, w8, scaleInv, dySlot, xSlot, wSlot, n, in, outF);
    }
}
