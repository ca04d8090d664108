package org.sparkatron.device.cuda;

import org.sparkatron.device.AttentionBlock;
import org.sparkatron.device.Kernels;
import org.sparkatron.precision.Fp8Format;
import org.sparkatron.device.MoeKernels;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * {@link Kernels} on a {@link CudaDevice}: our kernels ({@code gpu-runtime/src/main/cuda}) and cuBLASLt
 * GEMMs, all queued on the device's compute stream. Each kernel exists for F32 tensors and, where
 * activations may be 16-bit, for BF16 (the suffix is picked from the tensor's dtype); parameters,
 * gradients, statistics and optimizer state are F32. Reductions are deterministic (no atomics), so the same
 * inputs give the same bits on every run.
 *
 * <p>FP8 (docs/precision.md): operands are FP8 codes (FP8_E4M3 / FP8_E5M2 tensors); casts, amaxes and scale
 * updates are our kernels ({@code fp8.cu}, bit-exact against the CPU device's), GEMMs are cuBLASLt's FP8 GEMMs
 * with the scales as device pointers. Hopper's FP8 GEMM takes only "TN" operands, so the backward first
 * transposes the FP8 weight, input and output gradient into scratch (Transformer Engine's cast-transpose does
 * the same, fused with the cast).
 *
 * <p>Mixture-of-experts kernels: {@link CudaMoeKernels}.
 *
 * <p>Owns the device's kernel scratch (norm gradient partials, attention row terms, reduction partials),
 * grown on demand from the device's allocator. One rank's thread; not thread-safe.
 */
public final class CudaKernels implements Kernels {
    private static final int BLOCK = 256;
    private static final int MAX_GRID = 4096;
    /** Blocks of a per-row backward: bounds the [blocks, C] partial-sum scratch. */
    private static final int ROW_GRID = 256;
    /** Blocks of a two-stage reduction (the partials are added in this order: deterministic). */
    private static final int REDUCE_GRID = 256;

    private final CudaDevice dev;
    private Tensor normScratch;
    private Tensor attnScratch;
    /** FP8 transposes of the backward: the weight, the input, the output gradient. */
    private final Tensor[] fp8Scratch = new Tensor[3];
    private final Tensor reducePartials;
    private final CudaMoeKernels moe;

    CudaKernels(CudaDevice dev) {
        this.dev = dev;
        this.moe = new CudaMoeKernels(dev);
        this.reducePartials = dev.allocate(DType.F64, REDUCE_GRID);
    }

    private static String sfx(Tensor t) {
        return switch (t.dtype()) {
            case F32 -> "_f32";
            case BF16 -> "_bf16";
            case F16 -> "_f16";
            default -> throw new IllegalArgumentException("no CUDA kernel for " + t.dtype() + " tensors");
        };
    }

    private static int grid(long work, int block) {
        return (int) Math.min(MAX_GRID, (work + block - 1) / block);
    }

    private void each(String fn, long n, Object... args) {
        dev.launch(fn, grid(n, BLOCK), BLOCK, 0, args);
    }

    private Tensor scratch(Tensor current, DType t, long elements, boolean norm) {
        if (current != null && current.numel() >= elements) {
            return current;
        }
        dev.release(current);
        Tensor s = dev.allocate(t, Math.max(elements, 1));
        if (norm) {
            normScratch = s;
        } else {
            attnScratch = s;
        }
        return s;
    }

    // ---- linear layers through cuBLASLt (row-major tensors seen as transposed column-major matrices) ----

    @Override
    public void linearForward(Tensor out, Tensor x, Tensor w, Tensor bias, int n, int in, int outF) {
        // out^T[O, N] = W'^T X' with W' = w^T (I x O, ld I) and X' = x^T (I x N, ld I): "TN"
        dev.cublasLt().matmul(true, false, outF, n, in, 1f, w, 0, in, x, 0, in, 0f, out, 0, outF, bias);
    }

    @Override
    public void linearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor x, Tensor w,
                               int n, int in, int outF) {
        CublasLt lt = dev.cublasLt();
        if (dx != null) {
            // dx^T[I, N] = w^T[I, O] dout^T[O, N]
            lt.matmul(false, false, in, n, outF, 1f, w, 0, in, dout, 0, outF, accumulateDx ? 1f : 0f, dx, 0, in, null);
        }
        // dw^T[I, O] += x^T[I, N] dout[N, O]
        lt.matmul(false, true, in, outF, n, 1f, x, 0, in, dout, 0, outF, 1f, dw, 0, in, null);
        if (dbias != null) {
            each("bias_grad" + sfx(dout), outF, dbias, dout, (long) n, outF);
        }
    }

    // ---- embeddings ----

    @Override
    public void embeddingForward(Tensor out, Tensor tokens, Tensor table, int vocabStart, int n, int c) {
        each("embedding_forward" + sfx(out), (long) n * c, out, tokens, table, vocabStart, table.dim(0), (long) n, c);
    }

    @Override
    public void embeddingBackward(Tensor dtable, Tensor dout, Tensor tokens, int vocabStart, int n, int c) {
        each("embedding_backward" + sfx(dout), c, dtable, dout, tokens, vocabStart, dtable.dim(0), (long) n, c);
    }

    @Override
    public void addPositions(Tensor x, Tensor wpe, Tensor positions, int firstRow, int rows, int t, int c) {
        each("add_positions" + sfx(x), (long) rows * c, x, wpe, orNull(positions), (long) firstRow, (long) rows, t, c);
    }

    @Override
    public void positionsBackward(Tensor dwpe, Tensor dx, Tensor positions, int firstRow, int rows, int t, int c) {
        each("positions_backward" + sfx(dx), (long) t * c, dwpe, dx, orNull(positions), (long) firstRow, (long) rows, t, c);
    }

    /** A kernel's optional pointer argument: the tensor, or the null address. */
    private static Object orNull(Tensor t) {
        return t == null ? (Object) 0L : t;
    }

    // ---- norms ----

    /**
     * Threads per block for the one-block-per-row kernels (norms, cross-entropy): BLOCK, or fewer for rows
     * narrower than BLOCK -- enough warps for one thread per element. Threads beyond the row's width would hold
     * only zeros for the block reductions, so the results are the same bits, without idle warps (the emulated
     * CUDA's cost is per thread).
     */
    private static int rowBlock(int width) {
        return (int) Math.min(BLOCK, Math.max(32, (width + 31L) / 32 * 32));
    }

    private static int rowGrid(long rows) {
        return (int) Math.max(1, Math.min(ROW_GRID, rows));
    }

    @Override
    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, int n, int c, float eps) {
        dev.launch("layernorm_forward" + sfx(x), (int) Math.min(n, 65535), rowBlock(c), 0, out, mean, rstd, x, w, b, (long) n, c, eps);
    }

    @Override
    public void layerNormBackward(Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w, Tensor mean, Tensor rstd,
                                  int n, int c) {
        int g = rowGrid(n);
        Tensor s = scratch(normScratch, DType.F32, 2L * g * c, true);
        Tensor pw = s.slice(0, (long) g * c);
        Tensor pb = s.slice((long) g * c, (long) g * c);
        dev.launch("layernorm_backward" + sfx(x), g, rowBlock(c), 0, dx, pw, pb, dout, x, w, mean, rstd, (long) n, c);
        each("norm_grad_reduce", c, dw, pw, g, c);
        each("norm_grad_reduce", c, db, pb, g, c);
    }

    @Override
    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor w, int n, int c, float eps) {
        dev.launch("rmsnorm_forward" + sfx(x), (int) Math.min(n, 65535), rowBlock(c), 0, out, rstd, x, w, (long) n, c, eps);
    }

    @Override
    public void rmsNormBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, int n, int c) {
        int g = rowGrid(n);
        Tensor pw = scratch(normScratch, DType.F32, (long) g * c, true).slice(0, (long) g * c);
        dev.launch("rmsnorm_backward" + sfx(x), g, rowBlock(c), 0, dx, pw, dout, x, w, rstd, (long) n, c);
        each("norm_grad_reduce", c, dw, pw, g, c);
    }

    // ---- activations and elementwise ----

    @Override
    public void geluForward(Tensor out, Tensor x, long count) {
        each("gelu_forward" + sfx(x), count, out, x, count);
    }

    @Override
    public void geluBackward(Tensor dx, Tensor dout, Tensor x, long count) {
        each("gelu_backward" + sfx(x), count, dx, dout, x, count);
    }

    @Override
    public void swigluForward(Tensor out, Tensor gateUp, int n, int f) {
        each("swiglu_forward" + sfx(gateUp), (long) n * f, out, gateUp, (long) n, f);
    }

    @Override
    public void swigluBackward(Tensor dGateUp, Tensor dout, Tensor gateUp, int n, int f) {
        each("swiglu_backward" + sfx(gateUp), (long) n * f, dGateUp, dout, gateUp, (long) n, f);
    }

    @Override
    public void add(Tensor out, Tensor a, Tensor b, long count) {
        each("add" + sfx(out), count, out, a, b, count);
    }

    /** {@code out[r, :] += bias} for r in [0, rows). */
    @Override
    public void addBias(Tensor out, Tensor bias, int rows, int cols) {
        each("add_bias" + sfx(out), (long) rows * cols, out, bias, (long) rows, cols);
    }

    /** Dropout in place with {@code org.sparkatron.parallel.DropoutRng}'s counter-based mask (bit-identical). */
    @Override
    public void dropout(Tensor x, float p, long base, long firstRow, int rows, int cols) {
        each("dropout" + sfx(x), (long) rows * cols, x, p, base, firstRow, (long) rows, cols);
    }

    /** {@code dst = round(src)} to BF16/F16: into a 16-bit tensor, or an F32 one holding the rounded values. */
    @Override
    public void round(Tensor dst, Tensor src, long count, DType format) {
        if (src.dtype() != DType.F32 || (format != DType.BF16 && format != DType.F16)) {
            throw new IllegalArgumentException("round from " + src.dtype() + " to " + format + " (F32 to BF16/F16 only)");
        }
        String f = format == DType.BF16 ? "bf16" : "f16";
        if (dst.dtype() == format) {
            each("round_f32_to_" + f, count, dst, src, count);
        } else if (dst.dtype() == DType.F32) {
            each("round_f32_as_" + f, count, dst, src, count);
        } else {
            throw new IllegalArgumentException("round into a " + dst.dtype() + " tensor (" + format + " or F32 expected)");
        }
    }

    /** {@code dst = src}: BF16/F16 elements widened exactly into F32 ones. */
    @Override
    public void widen(Tensor dst, Tensor src, long count) {
        if (dst.dtype() != DType.F32 || (src.dtype() != DType.BF16 && src.dtype() != DType.F16)) {
            throw new IllegalArgumentException("widen from " + src.dtype() + " into " + dst.dtype() + " (BF16/F16 to F32 only)");
        }
        each(src.dtype() == DType.BF16 ? "widen_bf16_to_f32" : "widen_f16_to_f32", count, dst, src, count);
    }

    // ---- attention ----

    @Override
    public void rope(Tensor qkv, Tensor cos, Tensor sin, Tensor positions, int b, int t, int heads, int kvHeads, int hd,
                     boolean inverse) {
        long rows = (long) b * t;
        each("rope" + sfx(qkv), rows * (heads + kvHeads) * (hd / 2), qkv, cos, sin, orNull(positions), rows, t, heads, kvHeads, hd,
                inverse ? 1 : 0);
    }

    private static void checkHeadDim(int hd) {
        if (hd > 256) {
            throw new IllegalArgumentException("CUDA attention supports head dimensions up to 256, got " + hd);
        }
    }

    private static int warpGrid(long warps) {
        return (int) ((warps + 3) / 4); // 4 warps per 128-thread block
    }

    /**
     * The whole causal attention is one block of the block kernels (attention_block.cu): queries are the q columns
     * of the packed QKV rows, keys and values the columns after them, all at the packed row pitch.
     */
    @Override
    public void attentionForward(Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads, int kvHeads, int hd) {
        int width = (heads + 2 * kvHeads) * hd;
        attentionBlockForward(out, lse, qkv, width, kvColumns(qkv, heads, hd), width, AttentionBlock.causal(b, t, heads, kvHeads, hd));
    }

    /** The block kernels' backward accumulates: dqkv is zeroed first, so it holds exactly this call's gradients. */
    @Override
    public void attentionBackward(Tensor dqkv, Tensor dout, Tensor out, Tensor lse, Tensor qkv, int b, int t, int heads,
                                  int kvHeads, int hd) {
        int width = (heads + 2 * kvHeads) * hd;
        zero(dqkv);
        attentionBlockBackward(dqkv, width, kvColumns(dqkv, heads, hd), width, dout, out, lse, qkv, width, kvColumns(qkv, heads, hd),
                width, AttentionBlock.causal(b, t, heads, kvHeads, hd));
    }

    /** The packed QKV tensor seen from its first key column (the block kernels' key/value operand). */
    private static Tensor kvColumns(Tensor qkv, int heads, int hd) {
        long q = (long) heads * hd;
        return qkv.slice(q, qkv.numel() - q);
    }

    /** The block's shape as the block kernels take it (attention_block.cu's BLOCK_ARGS). */
    private static Object[] shape(AttentionBlock b) {
        return new Object[] {(long) b.batch(), b.heads(), b.kvHeads(), b.headDim(), b.qSeq(), b.qFirst(), b.qRows(), b.kvSeq(),
            b.kvFirst(), b.kvRows(), b.diagonal()};
    }

    private static Object[] args(Object[] head, AttentionBlock b) {
        Object[] s = shape(b);
        Object[] all = java.util.Arrays.copyOf(head, head.length + s.length);
        System.arraycopy(s, 0, all, head.length, s.length);
        return all;
    }

    @Override
    public void attentionBlockForward(Tensor out, Tensor lse, Tensor q, int qld, Tensor kv, int kvld, AttentionBlock blk) {
        checkHeadDim(blk.headDim());
        long rows = (long) blk.batch() * blk.heads() * blk.qRows();
        dev.launch("attention_block_forward" + sfx(q), warpGrid(rows), 128, 0, args(new Object[] {out, lse, q, qld, kv, kvld}, blk));
    }

    @Override
    public void attentionBlockBackward(Tensor dq, int dqld, Tensor dkv, int dkvld, Tensor dout, Tensor out, Tensor lse, Tensor q,
                                       int qld, Tensor kv, int kvld, AttentionBlock blk) {
        checkHeadDim(blk.headDim());
        long rows = (long) blk.batch() * blk.heads() * blk.qRows();
        if (rows == 0 || blk.kvRows() == 0) {
            return; // no query sees a key: nothing to accumulate
        }
        Tensor delta = scratch(attnScratch, DType.F32, rows, false);
        String s = sfx(q);
        dev.launch("attention_block_delta" + s, warpGrid(rows), 128, 0, args(new Object[] {delta, dout, out}, blk));
        dev.launch("attention_block_backward_dq" + s, warpGrid(rows), 128, 0,
                args(new Object[] {dq, dqld, dout, lse, delta, q, qld, kv, kvld}, blk));
        dev.launch("attention_block_backward_dkv" + s, warpGrid((long) blk.batch() * blk.kvHeads() * blk.kvRows()), 128, 0,
                args(new Object[] {dkv, dkvld, dout, lse, delta, q, qld, kv, kvld}, blk));
    }

    @Override
    public void attentionMerge(Tensor out, Tensor lse, Tensor partOut, Tensor partLse, AttentionBlock blk) {
        long rows = (long) blk.batch() * blk.heads() * blk.qRows();
        dev.launch("attention_merge" + sfx(out), warpGrid(rows), 128, 0, args(new Object[] {out, lse, partOut, partLse}, blk));
    }

    // ---- cross-entropy ----

    @Override
    public void crossEntropyMax(Tensor logits, Tensor max, int rows, int valid, int ld) {
        dev.launch("ce_max" + sfx(logits), (int) Math.max(1, Math.min(rows, 65535)), rowBlock(valid), 0, logits, max, (long) rows, valid, ld);
    }

    @Override
    public void crossEntropySums(Tensor logits, Tensor max, Tensor sums, Tensor targets, int vocabStart, int vocab, int rows,
                                 int valid, int ld, boolean storeExp) {
        dev.launch("ce_sums" + sfx(logits), (int) Math.max(1, Math.min(rows, 65535)), rowBlock(valid), 0, logits, max, sums, targets,
                dev.errorFlag(), vocabStart, vocab, (long) rows, valid, ld, storeExp ? 1 : 0);
    }

    @Override
    public void crossEntropyFinish(Tensor logits, Tensor max, Tensor sums, Tensor losses, Tensor targets, int vocabStart,
                                   int rows, int valid, int ld, boolean backward, float gradScale) {
        dev.launch("ce_finish" + sfx(logits), (int) Math.max(1, Math.min(rows, 65535)), BLOCK, 0, logits, max, sums, losses, targets,
                vocabStart, (long) rows, valid, ld, backward ? 1 : 0, gradScale);
    }

    // ---- optimizer and reductions ----

    @Override
    public void adamw(Tensor params, Tensor grads, Tensor m, Tensor v, long from, long count, float beta1, float beta2, float eps,
                      float decay, float stepSize, float invSqrtBc2) {
        each("adamw_f32", count, params, grads, m, v, from, count, beta1, beta2, eps, decay, stepSize, invSqrtBc2);
    }

    /** {@code acc[slot] += scale * sum of x[0, count)} (squares when {@code squares}), in double; acc is F64. */
    private void reduce(Tensor x, long count, boolean squares, Tensor acc, int slot, double scale) {
        requireF32(x);
        if (acc.dtype() != DType.F64) {
            throw new IllegalArgumentException("reduction accumulator must be F64, got " + acc.dtype());
        }
        int g = (int) Math.max(1, Math.min(REDUCE_GRID, (count + BLOCK - 1) / BLOCK));
        dev.launch("reduce_partial_f32", g, BLOCK, 0, x, count, squares ? 1 : 0, reducePartials);
        dev.launch("reduce_finish", 1, 32, 0, acc, slot, reducePartials, g, scale);
    }

    /** {@code acc[slot] += sum of x^2} over all of x (F32), in double. */
    @Override
    public void sumOfSquares(Tensor x, Tensor acc, int slot) {
        reduce(x, x.numel(), true, acc, slot, 1.0);
    }

    /** {@code acc[slot] += scale * sum of x[0, count)} (F32), in double. */
    @Override
    public void sum(Tensor x, long count, Tensor acc, int slot, double scale) {
        reduce(x, count, false, acc, slot, scale);
    }

    @Override
    public void scale(Tensor x, float factor) {
        requireF32(x);
        each("scale_f32", x.numel(), x, factor, x.numel());
    }

    @Override
    public void fill(Tensor x, float value) {
        requireF32(x);
        each("fill_f32", x.numel(), x, value, x.numel());
    }

    /** All bytes of x = 0 (any dtype). */
    @Override
    public void zero(Tensor x) {
        dev.zero(x);
    }

    // ---- mixture of experts: CudaMoeKernels (moe.cu, grouped_gemm.cu), on the same compute stream ----

    @Override
    public boolean hasMoeKernels() {
        return true;
    }

    @Override
    public MoeKernels moe() {
        return moe;
    }

    private static void requireF32(Tensor t) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("expected an F32 tensor, got " + t.dtype());
        }
    }

    // ---- FP8 (fp8.cu, cuBLASLt FP8 GEMMs) ----

    @Override
    public boolean supportsFp8() {
        return true;
    }

    @Override
    public void amax(Tensor x, long count, Tensor amax, int slot) {
        requireF32(x);
        requireF32(amax);
        if (count > 0) {
            each("fp8_amax_f32", count, x, count, amax, slot);
        }
    }

    @Override
    public void castToFp8(Tensor dst, Tensor src, long count, Fp8Format format, Tensor scale, int slot, Tensor amaxOut,
                          int amaxSlot) {
        requireF32(src);
        requireF32(scale);
        if (dst.dtype() != DType.F32 && dst.dtype() != format.dtype()) {
            throw new IllegalArgumentException("an " + format + " cast writes " + format.dtype() + " codes or F32 values, got " + dst);
        }
        if (amaxOut != null) {
            amax(src, count, amaxOut, amaxSlot);
        }
        if (count > 0) {
            each(dst.dtype() == DType.F32 ? "fp8_cast_values" : "fp8_cast_codes", count, dst, src, count, scale, slot,
                    format == Fp8Format.E4M3 ? 1 : 0);
        }
    }

    @Override
    public void fp8ScaleFromAmax(Tensor amax, Tensor scale, Tensor scaleInv, int from, int count, float fp8Max) {
        if (count > 0) {
            each("fp8_scale_from_amax", count, amax, scale, scaleInv, from, count, fp8Max);
        }
    }

    @Override
    public void fp8DelayedScaling(Tensor history, Tensor scale, Tensor scaleInv, int len, int slots, int from, int count,
                                  boolean useMax, float scaledMax) {
        if (count > 0) {
            each("fp8_delayed_scaling", count, history, scale, scaleInv, len, slots, from, count, useMax ? 1 : 0, scaledMax);
        }
    }

    private static void requireCodes(Tensor... operands) {
        for (Tensor t : operands) {
            if (t.dtype() != DType.FP8_E4M3 && t.dtype() != DType.FP8_E5M2) {
                throw new IllegalArgumentException("the CUDA FP8 GEMM takes FP8 codes (FP8_E4M3 / FP8_E5M2 tensors), got " + t);
            }
        }
    }

    /** {@code src [rows, cols]} transposed into scratch {@code which}, as a {@code [cols, rows]} tensor of src's dtype. */
    private Tensor transposed(int which, Tensor src, long rows, int cols) {
        long count = rows * cols;
        Tensor s = fp8Scratch[which];
        if (s == null || s.dtype() != src.dtype() || s.numel() < count) {
            dev.release(s);
            s = dev.allocate(src.dtype(), count);
            fp8Scratch[which] = s;
        }
        Tensor t = s.slice(0, count);
        each("fp8_transpose", count, t, src, rows, cols);
        return t;
    }

    @Override
    public void fp8LinearForward(Tensor out, Tensor x8, Tensor w8, Tensor scaleInv, int xSlot, int wSlot, Tensor bias, int n,
                                 int in, int outF) {
        requireCodes(x8, w8);
        // out^T[O, N] = (sInv_w w8)(sInv_x x8^T): A = w8 (col-major I x O, transposed), B = x8 (col-major I x N): "TN"
        dev.cublasLt().matmulFp8(outF, n, in, w8, in, x8, in, scaleInv, wSlot, xSlot, 0f, out, outF);
        if (bias != null) {
            addBias(out, bias, n, outF); // not the bias epilogue: for FP8 GEMMs with an F32 output cuBLASLt documents a bf16 bias
        }
    }

    @Override
    public void fp8LinearBackward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor dbias, Tensor dout, Tensor dy8, Tensor x8,
                                  Tensor w8, Tensor scaleInv, int dySlot, int xSlot, int wSlot, int n, int in, int outF) {
        requireCodes(dy8, x8, w8);
        requireF32(dw);
        CublasLt lt = dev.cublasLt();
        if (dx != null) {
            // dx^T[I, N] = w^T[I, O] dy^T[O, N]: A = w^T (row-major [I, O] = col-major O x I, transposed), B = dy8
            Tensor wT = transposed(0, w8, outF, in);
            lt.matmulFp8(in, n, outF, wT, outF, dy8, outF, scaleInv, wSlot, dySlot, accumulateDx ? 1f : 0f, dx, in);
        }
        // dw^T[I, O] += x^T[I, N] dy[N, O]: A = x^T (row-major [I, N], transposed), B = dy^T (row-major [O, N])
        Tensor xT = transposed(1, x8, n, in);
        Tensor dyT = transposed(2, dy8, n, outF);
        lt.matmulFp8(in, outF, n, xT, n, dyT, n, scaleInv, xSlot, dySlot, 1f, dw, in);
        if (dbias != null) {
            each("bias_grad" + sfx(dout), outF, dbias, dout, (long) n, outF);
        }
    }
}
