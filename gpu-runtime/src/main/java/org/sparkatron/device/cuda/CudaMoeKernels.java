package org.sparkatron.device.cuda;

import org.sparkatron.device.MoeKernels;
import org.sparkatron.device.MoeRouting;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The mixture-of-experts kernels of {@link CudaKernels} (its {@link CudaKernels#moe()}: {@code moe.cu},
 * {@code grouped_gemm.cu}; contracts on {@link MoeKernels}), queued on the device's compute stream. Nothing here reads device
 * memory on the host: counts and offsets stay on the device, and the grouped GEMMs read their group offsets
 * there. Router arithmetic is per token in double in the CPU device's order, so the top-k choices and weights
 * are the CPU's; reductions add fixed partials in order and every output has one writer, so results are
 * deterministic. Tensors are F32 (the engine keeps activations in F32, rounded for 16-bit precisions) and I32.
 *
 * <p>Owns its scratch (positions within an expert, per-expert and per-block partial sums, offsets), grown on
 * demand from the device's allocator (so a step after the first allocates nothing) and freed with the device.
 * One rank's thread; not thread-safe.
 */
final class CudaMoeKernels implements MoeKernels {
    private static final int BLOCK = 256;
    private static final int MAX_GRID = 4096;
    /** Blocks of the z-loss reduction (its partials are added in this order). */
    private static final int Z_GRID = 64;
    /** Threads of the per-assignment row kernels (scatter, combine backward). */
    private static final int ROW_BLOCK = 128;
    private static final int GEMM_TILE = 64;
    private static final int GEMM_THREADS = 256;

    private final CudaDevice dev;
    private Tensor partials; // F64: per expert, or per z-loss block
    private Tensor positions; // I32 [n k]: an assignment's place inside its expert's block
    private Tensor offsetScratch; // I32 [e + 1] when the caller wants no offsets

    CudaMoeKernels(CudaDevice dev) {
        this.dev = dev;
    }

    private Tensor grow(Tensor current, DType type, long elements) {
        if (current != null && current.numel() >= elements) {
            return current;
        }
        dev.release(current);
        return dev.allocate(type, Math.max(elements, 1));
    }

    private Tensor partials(long count) {
        partials = grow(partials, DType.F64, count);
        return partials;
    }

    private static int grid(long work, int block) {
        return (int) Math.max(1, Math.min(MAX_GRID, (work + block - 1) / block));
    }

    private static int blocks(long items) {
        return (int) Math.max(1, Math.min(MAX_GRID, items));
    }

    private static void require(Tensor t, DType type, String what) {
        if (t.dtype() != type) {
            throw new IllegalArgumentException("MoE kernel " + what + ": expected " + type + ", got " + t.dtype());
        }
    }

    private static Object ptr(Tensor t) {
        return t == null ? (Object) 0L : t;
    }

    @Override
    public void route(Tensor logits, Tensor experts, Tensor probs, Tensor scores, Tensor bias, int n, int e, int k, MoeRouting r) {
        require(logits, DType.F32, "route logits");
        require(experts, DType.I32, "route experts");
        dev.launch("moe_route", grid(n, BLOCK), BLOCK, 0, logits, experts, probs, ptr(scores), ptr(bias), (long) n, e, k,
                r.sigmoid() ? 1 : 0, r.normTopK() ? 1 : 0, r.scale());
    }

    @Override
    public void countTokens(Tensor tally, Tensor counts, int e) {
        require(tally, DType.F64, "token tally");
        dev.launch("moe_count_tokens", grid(e, BLOCK), BLOCK, 0, tally, counts, e);
    }

    @Override
    public void expertBiasUpdate(Tensor bias, Tensor tally, int e, float rate) {
        require(bias, DType.F32, "expert bias");
        require(tally, DType.F64, "token tally");
        dev.launch("moe_expert_bias_update", 1, BLOCK, 0, bias, tally, e, rate);
    }

    @Override
    public void auxLoss(Tensor scores, Tensor experts, Tensor auxGrad, Tensor acc, int slot, int n, int e, int k, float gradWeight,
                 double reportWeight) {
        require(acc, DType.F64, "aux loss accumulator");
        double factor = (double) e / ((double) k * n * n);
        Tensor p = partials(e);
        dev.launch("moe_aux_partial", blocks(e), BLOCK, 0, scores, experts, auxGrad, p, (long) n, e, k, gradWeight, factor);
        dev.launch("reduce_finish", 1, 32, 0, acc, slot, p, e, reportWeight * factor);
    }

    @Override
    public void zLoss(Tensor logits, Tensor acc, int slot, int n, int e, double reportWeight) {
        require(acc, DType.F64, "z-loss accumulator");
        int g = Math.min(Z_GRID, grid(n, BLOCK));
        Tensor p = partials(g);
        dev.launch("moe_z_partial", g, BLOCK, 0, logits, p, (long) n, e);
        dev.launch("reduce_finish", 1, 32, 0, acc, slot, p, g, reportWeight / n);
    }

    @Override
    public void capacity(Tensor routed, Tensor probs, Tensor experts, Tensor acc, int slot, int n, int e, int k, int cap,
                  double reportWeight) {
        Tensor p = partials(e);
        dev.launch("moe_capacity", blocks(e), BLOCK, 0, routed, probs, experts, p, (long) n * k, e, cap);
        if (acc != null) {
            require(acc, DType.F64, "capacity accumulator");
            dev.launch("reduce_finish", 1, 32, 0, acc, slot, p, e, reportWeight);
        }
    }

    @Override
    public void permute(Tensor out, Tensor rowMap, Tensor counts, Tensor offsets, Tensor x, Tensor routed, int n, int c, int e, int k,
                 int capacity) {
        require(x, DType.F32, "permute input");
        long nk = (long) n * k;
        positions = grow(positions, DType.I32, nk);
        Tensor off = offsets;
        if (off == null) {
            offsetScratch = grow(offsetScratch, DType.I32, e + 1L);
            off = offsetScratch;
        }
        dev.launch("moe_rank", blocks(e), BLOCK, 0, routed, positions, counts, nk, e);
        dev.launch("moe_offsets", 1, 32, 0, counts, off, e, capacity);
        dev.launch("moe_scatter", blocks(nk), ROW_BLOCK, 0, out, rowMap, x, routed, positions, off, nk, c, k);
        if (capacity > 0) {
            dev.launch("moe_pad_zero", grid((long) e * capacity * c, BLOCK), BLOCK, 0, out, counts, e, capacity, c);
        }
    }

    @Override
    public void permuteBackward(Tensor dx, Tensor dperm, Tensor rowMap, int n, int c, int k) {
        dev.launch("moe_permute_backward", grid((long) n * c, BLOCK), BLOCK, 0, dx, dperm, rowMap, (long) n, c, k);
    }

    @Override
    public void unpermute(Tensor out, Tensor y, Tensor rowMap, Tensor probs, int n, int c, int k) {
        dev.launch("moe_unpermute", grid((long) n * c, BLOCK), BLOCK, 0, out, y, rowMap, probs, (long) n, c, k);
    }

    @Override
    public void unpermuteBackward(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rowMap, Tensor probs, int rows, int n, int c,
                           int k) {
        if (rows > 0) {
            dev.zero(dy.slice(0, (long) rows * c)); // rows no assignment reaches are 0
        }
        long nk = (long) n * k;
        dev.launch("moe_unpermute_backward", blocks(nk), ROW_BLOCK, 0, dy, dprobs, dout, y, rowMap, probs, nk, c, k);
    }

    @Override
    public void routeBackward(Tensor dlogits, Tensor dprobs, Tensor logits, Tensor experts, Tensor auxGrad, float zWeight, int n, int e,
                       int k, MoeRouting r) {
        dev.launch("moe_route_backward", grid(n, BLOCK), BLOCK, 0, dlogits, dprobs, logits, experts, ptr(auxGrad), zWeight, (long) n,
                e, k, r.sigmoid() ? 1 : 0, r.normTopK() ? 1 : 0, r.scale());
    }

    @Override
    public void sortChunks(Tensor out, Tensor offsets, Tensor in, Tensor counts, int a, int b, int c, boolean inverse) {
        require(in, DType.F32, "chunk reordering");
        int chunks = a * b;
        // parts per chunk: about as many blocks as the buffer has 256-element pieces per chunk, at least one
        int parts = (int) Math.max(1, Math.min(64, in.numel() / Math.max(1, (long) chunks * BLOCK)));
        dev.launch("moe_chunk_copy", blocks((long) chunks * parts), BLOCK, 0, out, in, counts, a, b, c, inverse ? 1 : 0, parts);
        if (offsets != null) {
            dev.launch("moe_chunk_offsets", 1, 32, 0, counts, offsets, a, b);
        }
    }

    /** Row-tile lanes per (group, column tile): enough for the buffer's rows spread evenly over the groups. */
    private static int lanes(Tensor x, int in, int groups) {
        long rows = x.numel() / Math.max(1, in);
        long perGroup = (rows + groups - 1) / Math.max(1, groups);
        return (int) Math.max(1, Math.min(32, (perGroup + GEMM_TILE - 1) / GEMM_TILE));
    }

    private static int tiles(int n) {
        return (n + GEMM_TILE - 1) / GEMM_TILE;
    }

    @Override
    public void groupedLinearForward(Tensor out, Tensor x, Tensor w, Tensor offsets, int groups, int in, int outF) {
        require(x, DType.F32, "grouped GEMM input");
        require(w, DType.F32, "grouped GEMM weight");
        int lanes = lanes(x, in, groups);
        dev.launch("grouped_forward", blocks((long) groups * tiles(outF) * lanes), GEMM_THREADS, 0, out, x, w, offsets, groups, in,
                outF, lanes);
    }

    @Override
    public void groupedLinearBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets, int groups, int in, int outF) {
        require(dout, DType.F32, "grouped GEMM output gradient");
        if (dx != null) {
            int lanes = lanes(dout, outF, groups);
            dev.launch("grouped_backward_dx", blocks((long) groups * tiles(in) * lanes), GEMM_THREADS, 0, dx, dout, w, offsets, groups,
                    in, outF, lanes);
        }
        dev.launch("grouped_backward_dw", blocks((long) groups * tiles(outF) * tiles(in)), GEMM_THREADS, 0, dw, dout, x, offsets,
                groups, in, outF);
    }
}
