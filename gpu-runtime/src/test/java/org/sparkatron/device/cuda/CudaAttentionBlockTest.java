package org.sparkatron.device.cuda;

import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.device.cpu.Arrays32.f32;
import static org.sparkatron.device.cpu.Arrays32.i32;
import static org.sparkatron.device.cpu.Arrays32.random;
import static org.sparkatron.device.cpu.Arrays32.read;
import static org.sparkatron.device.cuda.CudaTests.bf16;
import static org.sparkatron.device.cuda.CudaTests.down;
import static org.sparkatron.device.cuda.CudaTests.downBf16;
import static org.sparkatron.device.cuda.CudaTests.roundBf16;
import static org.sparkatron.device.cuda.CudaTests.up;

import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.Test;
import org.sparkatron.device.AttentionBlock;
import org.sparkatron.device.cpu.CpuKernels;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The CUDA kernels context parallelism adds, against the CPU kernels (which AttentionBlockKernelsTest checks
 * against a double-precision reference and finite differences): attention of a query block against a key/value
 * block under a shifted causal mask (forward with log-sum-exp, accumulating backward), the online-softmax merge,
 * and learned positions and RoPE at a table of global positions. Blocks as ring and all-gather attention issue
 * them: a packed QKV tensor's own causal block, query chunks against a packed [k | v] block with no mask, a
 * shifted diagonal, and rows that see no key (output 0, log-sum-exp -inf, no gradient). Rows outside a block
 * must stay untouched, and the backward must add to what dq and dkv held.
 *
 * <p>Tolerances as CudaKernelsTest's attention: 5e-5 (fp32 sums over at most 16 keys and 40 head dimensions in
 * another order than the CPU's GEMMs); the merge's coefficients are double on both sides: 1e-6. BF16: one bf16
 * ulp (3.9e-3 relative) on top, the CPU fed the same bf16 values.
 */
@Tag("cuda")
class CudaAttentionBlockTest {
    static CudaDevice dev;
    static CudaKernels k;
    final CpuKernels cpu = new CpuKernels(false);
    final SplittableRandom rng = new SplittableRandom(11);

    @BeforeAll
    static void open() {
        dev = CudaTests.deviceOrSkip(0);
        k = dev.kernels();
    }

    @AfterAll
    static void close() {
        if (dev != null) {
            dev.close();
        }
    }

    /**
     * qSeq/kvSeq rows per sequence; the block's query rows [qFirst, +qRows) and key rows [kvFirst, +kvRows);
     * packed: keys and values are the k|v columns of the query tensor (a packed QKV block of its own sequence).
     */
    @ParameterizedTest(name = "q {1}+{2} of {0}, kv {4}+{5} of {3}, diagonal {6}, packed {7}")
    @CsvSource({
        "7, 0, 7, 7, 0, 7, 0, true",                // the whole causal attention as one block
        "8, 4, 4, 8, 0, 4, 2147483647, false",      // ring: second query chunk against a remote block, no mask
        "8, 0, 8, 8, 0, 4, 2147483647, false",      // ring: all queries against a remote block's first chunk
        "6, 2, 4, 9, 3, 5, 2, false",               // a query block starting 2 positions after its key block
        "6, 0, 6, 6, 0, 6, -2, false",              // rows 0 and 1 see no key
    })
    void blockForwardBackwardAndMergeMatchTheCpu(int qSeq, int qFirst, int qRows, int kvSeq, int kvFirst, int kvRows, long diagonal,
                                                 boolean packed) {
        int b = 2, heads = 4, kvHeads = 2, hd = 40, c = heads * hd, kvw = 2 * kvHeads * hd;
        int qld = packed ? c + kvw : c;
        AttentionBlock blk = new AttentionBlock(b, heads, kvHeads, hd, qSeq, qFirst, qRows, kvSeq, kvFirst, kvRows, diagonal);
        Tensor q = f32(random(rng, b * qSeq * qld, 1), b * qSeq, qld);
        Tensor kv = packed ? q.slice(c, q.numel() - c) : f32(random(rng, b * kvSeq * kvw, 1), b * kvSeq, kvw);
        int kvld = packed ? qld : kvw;
        Tensor dq0 = up(dev, q);
        Tensor dkv0 = packed ? dq0.slice(c, dq0.numel() - c) : up(dev, kv);

        // forward into outputs that hold other values: rows outside the block must keep them
        Tensor out = f32(random(rng, b * qSeq * c, 1), b * qSeq, c);
        Tensor lse = f32(random(rng, b * heads * qSeq, 1), b * heads * qSeq);
        Tensor dOut = up(dev, out);
        Tensor dLse = up(dev, lse);
        cpu.attentionBlockForward(out, lse, q, qld, kv, kvld, blk);
        k.attentionBlockForward(dOut, dLse, dq0, qld, dkv0, kvld, blk);
        String at = blk.toString();
        assertClose("block out " + at, read(out), down(dev, dOut), 5e-5, 5e-5);
        assertClose("block lse " + at, read(lse), down(dev, dLse), 5e-5, 5e-5);

        // backward accumulates into gradients that already hold something
        Tensor g = f32(random(rng, b * qSeq * c, 1), b * qSeq, c);
        Tensor gq = f32(random(rng, b * qSeq * qld, 1), b * qSeq, qld);
        Tensor gkv = packed ? gq.slice(c, gq.numel() - c) : f32(random(rng, b * kvSeq * kvw, 1), b * kvSeq, kvw);
        Tensor dgq = up(dev, gq);
        Tensor dgkv = packed ? dgq.slice(c, dgq.numel() - c) : up(dev, gkv);
        cpu.attentionBlockBackward(gq, qld, gkv, kvld, g, out, lse, q, qld, kv, kvld, blk);
        k.attentionBlockBackward(dgq, qld, dgkv, kvld, up(dev, g), dOut, dLse, dq0, qld, dkv0, kvld, blk);
        assertClose("block dq (accumulated) " + at, read(gq), down(dev, dgq), 5e-5, 5e-5);
        if (!packed) {
            assertClose("block dkv (accumulated) " + at, read(gkv), down(dev, dgkv), 5e-5, 5e-5);
        }

        // merge a partial result (some rows of which saw nothing) into this one
        Tensor partOut = f32(random(rng, b * qSeq * c, 1), b * qSeq, c);
        double[] pl = random(rng, b * heads * qSeq, 2);
        for (int i = 0; i < pl.length; i += 3) {
            pl[i] = Double.NEGATIVE_INFINITY;
        }
        Tensor partLse = f32(pl, b * heads * qSeq);
        Tensor dPartOut = up(dev, partOut);
        Tensor dPartLse = up(dev, partLse);
        cpu.attentionMerge(out, lse, partOut, partLse, blk);
        k.attentionMerge(dOut, dLse, dPartOut, dPartLse, blk);
        assertClose("merged out " + at, read(out), down(dev, dOut), 5e-5, 5e-5);
        assertClose("merged lse " + at, read(lse), down(dev, dLse), 5e-5, 5e-5);
    }

    /** An accumulated side that saw no key (-inf) is replaced by the partial result, coefficients in double. */
    @Test
    void mergeIntoRowsThatSawNothing() {
        int b = 1, heads = 2, hd = 5, t = 4, c = heads * hd;
        AttentionBlock blk = new AttentionBlock(b, heads, heads, hd, t, 0, t, t, 0, t, 0);
        double[] l = {Double.NEGATIVE_INFINITY, 0.5, Double.NEGATIVE_INFINITY, -1, 2, Double.NEGATIVE_INFINITY, 0, 1};
        double[] pl = {1.5, Double.NEGATIVE_INFINITY, Double.NEGATIVE_INFINITY, 3, -2, 0.25, 0, 1};
        Tensor out = f32(random(rng, t * c, 1), t, c);
        Tensor lse = f32(l, b * heads * t);
        Tensor po = f32(random(rng, t * c, 1), t, c);
        Tensor plse = f32(pl, b * heads * t);
        Tensor dOut = up(dev, out);
        Tensor dLse = up(dev, lse);
        cpu.attentionMerge(out, lse, po, plse, blk);
        k.attentionMerge(dOut, dLse, up(dev, po), up(dev, plse), blk);
        assertClose("merged out", read(out), down(dev, dOut), 1e-6, 1e-6);
        assertClose("merged lse", read(lse), down(dev, dLse), 1e-6, 1e-6);
    }

    @Test
    void bf16BlockForward() {
        int b = 2, heads = 4, kvHeads = 2, hd = 40, c = heads * hd, kvw = 2 * kvHeads * hd, t = 6;
        AttentionBlock blk = new AttentionBlock(b, heads, kvHeads, hd, t, 3, 3, t, 0, 6, 2);
        double[] qv = roundBf16(random(rng, b * t * c, 1));
        double[] kvv = roundBf16(random(rng, b * t * kvw, 1));
        Tensor out = Tensor.allocateHost(DType.F32, b * t, c);
        Tensor lse = Tensor.allocateHost(DType.F32, b * heads * t);
        cpu.fill(out, 0f);
        cpu.fill(lse, 0f);
        cpu.attentionBlockForward(out, lse, f32(qv, b * t, c), c, f32(kvv, b * t, kvw), kvw, blk);
        Tensor dOut = dev.allocate(DType.BF16, b * t, c);
        Tensor dLse = dev.allocate(DType.F32, b * heads * t);
        k.zero(dOut);
        k.zero(dLse);
        k.attentionBlockForward(dOut, dLse, up(dev, bf16(qv, b * t, c)), c, up(dev, bf16(kvv, b * t, kvw)), kvw, blk);
        assertClose("bf16 block out", read(out), downBf16(dev, dOut), 5e-5, 4e-3);
        assertClose("bf16 block lse", read(lse), down(dev, dLse), 5e-5, 5e-5);
    }

    /** Learned positions and RoPE at a table of global positions (CP rank 1 of 2: chunks 1 and 2 of 4). */
    @Test
    void positionsAndRopeAtGlobalPositions() {
        int b = 2, t = 4, c = 6, maxPos = 8, n = b * t;
        Tensor positions = i32(new int[] {2, 3, 4, 5}, t);
        Tensor dPositions = up(dev, positions);
        Tensor wpe = f32(random(rng, maxPos * c, 1), maxPos, c);
        Tensor x = f32(random(rng, n * c, 1), n, c);
        Tensor dx = up(dev, x);
        cpu.addPositions(x, wpe, positions, 1, n - 1, t, c);
        k.addPositions(dx, up(dev, wpe), dPositions, 1, n - 1, t, c);
        assertClose("add positions", read(x), down(dev, dx), 0, 0);
        Tensor g = f32(random(rng, n * c, 1), n, c);
        Tensor dwpe = f32(random(rng, maxPos * c, 1), maxPos, c);
        Tensor ddwpe = up(dev, dwpe);
        cpu.positionsBackward(dwpe, g, positions, 3, n, t, c);
        k.positionsBackward(ddwpe, up(dev, g), dPositions, 3, n, t, c);
        assertClose("positions backward", read(dwpe), down(dev, ddwpe), 1e-6, 1e-6);

        int heads = 4, kvHeads = 2, hd = 6, width = (heads + 2 * kvHeads) * hd;
        Tensor qkv = f32(random(rng, n * width, 1), n, width);
        Tensor cos = f32(random(rng, maxPos * hd / 2, 1), maxPos, hd / 2);
        Tensor sin = f32(random(rng, maxPos * hd / 2, 1), maxPos, hd / 2);
        Tensor d = up(dev, qkv);
        Tensor dc = up(dev, cos);
        Tensor ds = up(dev, sin);
        cpu.rope(qkv, cos, sin, positions, b, t, heads, kvHeads, hd, false);
        k.rope(d, dc, ds, dPositions, b, t, heads, kvHeads, hd, false);
        assertClose("rope at positions", read(qkv), down(dev, d), 1e-6, 1e-6);
        cpu.rope(qkv, cos, sin, positions, b, t, heads, kvHeads, hd, true);
        k.rope(d, dc, ds, dPositions, b, t, heads, kvHeads, hd, true);
        assertClose("rope inverse at positions", read(qkv), down(dev, d), 1e-6, 1e-6);
    }
}
