package org.sparkatron.device.cpu;

import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.device.cpu.Arrays32.f32;
import static org.sparkatron.device.cpu.Arrays32.i32;
import static org.sparkatron.device.cpu.Arrays32.random;
import static org.sparkatron.device.cpu.Arrays32.read;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.device.AttentionBlock;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The kernels context parallelism adds, against a double-precision reference and central finite differences
 * of it (as {@link CpuKernelsTest}): attention of a block of queries against a block of keys/values with a
 * shifted causal mask, returning the log-sum-exp; the merge of two partial results; the block backward, which
 * accumulates; and RoPE and learned positions at arbitrary global positions.
 *
 * <p>Tolerances as for the unsplit attention: fp32 reductions over at most a few hundred terms of order-1
 * values, so forward 2e-6 + 2e-5 relative, gradients 2e-5 + 1e-4 relative; the merge adds one rescaling in
 * double and a rounding to fp32 (2e-6 + 2e-5); positions are exact gathers (0).
 */
class AttentionBlockKernelsTest {
    final CpuKernels k = create();

    /** The Vector API kernels; {@link ScalarAttentionBlockKernelsTest} runs every case on the scalar loops. */
    CpuKernels create() {
        return new CpuKernels(true);
    }

    /** Query rows of the block: out and lse in double ({@code lse} -inf and out 0 where nothing is visible). */
    static double[][] reference(double[] q, int qld, double[] kv, int kvld, AttentionBlock blk) {
        int hd = blk.headDim();
        int c = blk.width();
        int group = blk.heads() / blk.kvHeads();
        double[] out = new double[blk.batch() * blk.qSeq() * c];
        double[] lse = new double[blk.batch() * blk.heads() * blk.qSeq()];
        for (int s = 0; s < blk.batch(); s++) {
            for (int h = 0; h < blk.heads(); h++) {
                int g = h / group;
                for (int i = 0; i < blk.qRows(); i++) {
                    int qRow = s * blk.qSeq() + blk.qFirst() + i;
                    int vis = blk.visible(i);
                    double[] sc = new double[vis];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < vis; j++) {
                        int kRow = s * blk.kvSeq() + blk.kvFirst() + j;
                        double dot = 0;
                        for (int d = 0; d < hd; d++) {
                            dot += q[qRow * qld + h * hd + d] * kv[kRow * kvld + g * hd + d];
                        }
                        sc[j] = dot / Math.sqrt(hd);
                        max = Math.max(max, sc[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < vis; j++) {
                        sum += Math.exp(sc[j] - max);
                    }
                    lse[(s * blk.heads() + h) * blk.qSeq() + blk.qFirst() + i] = vis == 0 ? Double.NEGATIVE_INFINITY
                            : max + Math.log(sum);
                    for (int d = 0; d < hd; d++) {
                        double acc = 0;
                        for (int j = 0; j < vis; j++) {
                            int kRow = s * blk.kvSeq() + blk.kvFirst() + j;
                            acc += Math.exp(sc[j] - max) / sum * kv[kRow * kvld + (blk.kvHeads() + g) * hd + d];
                        }
                        out[qRow * c + h * hd + d] = acc;
                    }
                }
            }
        }
        return new double[][] {out, lse};
    }

    static AttentionBlock block(String spec) {
        String[] f = spec.split(":");
        int[] v = new int[10];
        for (int i = 0; i < 10; i++) {
            v[i] = Integer.parseInt(f[i]);
        }
        long diag = f[10].equals("none") ? AttentionBlock.NO_MASK : Long.parseLong(f[10]);
        return new AttentionBlock(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], diag);
    }

    /** Fields: batch:heads:kvHeads:hd:qSeq:qFirst:qRows:kvSeq:kvFirst:kvRows:diagonal. */
    @ParameterizedTest(name = "block {0}")
    @CsvSource({
        "1:1:1:4:5:0:5:5:0:5:0",        // plain causal
        "2:4:2:3:6:2:3:7:1:5:1",        // GQA, shifted blocks inside longer sequences
        "2:2:1:4:4:0:4:8:0:8:4",        // a query chunk after its key prefix (all-gather's chunk against the prefix)
        "1:3:3:2:6:3:3:6:0:6:none",     // the second query chunk against a whole earlier block (ring, j > r)
        "2:2:2:3:5:0:5:4:0:4:-2",       // negative diagonal: the first two rows see nothing
        "1:2:1:2:4:1:2:3:0:0:0",        // an empty key block
    })
    void blockForwardAndBackwardAgainstTheReference(String spec) {
        AttentionBlock blk = block(spec);
        SplittableRandom rng = new SplittableRandom(spec.hashCode());
        int c = blk.width();
        int qld = c + 3;                                // q inside wider rows: the pitch is honoured
        int kvld = 2 * blk.kvHeads() * blk.headDim() + 1;
        int qn = blk.batch() * blk.qSeq() * qld;
        int kvn = Math.max(1, blk.batch() * blk.kvSeq() * kvld);
        double[] q = random(rng, qn, 1.5);
        double[] kv = random(rng, kvn, 1.5);
        double[] dout = random(rng, blk.batch() * blk.qSeq() * c, 1);
        double[] garbageOut = random(rng, blk.batch() * blk.qSeq() * c, 1);
        double[] garbageLse = random(rng, blk.batch() * blk.heads() * blk.qSeq(), 1);
        Tensor out = f32(garbageOut, blk.batch() * blk.qSeq(), c);
        Tensor lse = f32(garbageLse, blk.batch(), blk.heads(), blk.qSeq());
        Tensor qt = f32(q, qn);
        Tensor kvt = f32(kv, kvn);
        k.attentionBlockForward(out, lse, qt, qld, kvt, kvld, blk);
        double[][] want = reference(q, qld, kv, kvld, blk);
        // rows outside the block keep their contents
        double[] wantOut = garbageOut.clone();
        double[] wantLse = garbageLse.clone();
        for (int s = 0; s < blk.batch(); s++) {
            for (int i = blk.qFirst(); i < blk.qFirst() + blk.qRows(); i++) {
                System.arraycopy(want[0], (s * blk.qSeq() + i) * c, wantOut, (s * blk.qSeq() + i) * c, c);
                for (int h = 0; h < blk.heads(); h++) {
                    int at = (s * blk.heads() + h) * blk.qSeq() + i;
                    wantLse[at] = want[1][at];
                }
            }
        }
        assertClose("block forward " + spec, wantOut, read(out), 2e-6, 2e-5);
        assertClose("block log-sum-exp " + spec, wantLse, read(lse), 2e-6, 2e-5);

        // the backward accumulates onto what dq and dkv held; rows outside the blocks are untouched
        double[] dq0 = random(rng, qn, 1);
        double[] dkv0 = random(rng, kvn, 1);
        Tensor dq = f32(dq0, qn);
        Tensor dkv = f32(dkv0, kvn);
        k.attentionBlockBackward(dq, qld, dkv, kvld, f32(dout, blk.batch() * blk.qSeq(), c), out, lse, qt, qld, kvt, kvld, blk);
        double[] gq = Reference.gradient(x -> reference(x, qld, kv, kvld, blk)[0], q.clone(), dout);
        double[] gkv = Reference.gradient(x -> reference(q, qld, x, kvld, blk)[0], kv.clone(), dout);
        assertClose("block dq " + spec, add(dq0, gq), read(dq), 2e-5, 1e-4);
        assertClose("block dkv " + spec, add(dkv0, gkv), read(dkv), 2e-5, 1e-4);
    }

    private static double[] add(double[] a, double[] b) {
        double[] r = a.clone();
        for (int i = 0; i < r.length; i++) {
            r[i] += b[i];
        }
        return r;
    }

    /**
     * More query rows than one tile (the scores are computed 256 rows at a time, each tile only against the keys
     * its last row sees): forward against the reference, and the gradient against finite differences at a
     * sample of inputs.
     */
    @Test
    void tilesOfQueryRows() {
        AttentionBlock blk = new AttentionBlock(1, 2, 1, 2, 300, 0, 300, 300, 0, 300, 3);
        SplittableRandom rng = new SplittableRandom(300);
        int qld = 4;
        int kvld = 4;
        double[] q = random(rng, 300 * qld, 1.5);
        double[] kv = random(rng, 300 * kvld, 1.5);
        double[] dout = random(rng, 300 * 4, 1);
        Tensor out = Tensor.allocateHost(DType.F32, 300, 4);
        Tensor lse = Tensor.allocateHost(DType.F32, 1, 2, 300);
        Tensor qt = f32(q, q.length);
        Tensor kvt = f32(kv, kv.length);
        k.attentionBlockForward(out, lse, qt, qld, kvt, kvld, blk);
        double[][] want = reference(q, qld, kv, kvld, blk);
        assertClose("tiled forward", want[0], read(out), 2e-6, 2e-5);
        assertClose("tiled log-sum-exp", want[1], read(lse), 2e-6, 2e-5);
        Tensor dq = Tensor.allocateHost(DType.F32, q.length);
        Tensor dkv = Tensor.allocateHost(DType.F32, kv.length);
        k.attentionBlockBackward(dq, qld, dkv, kvld, f32(dout, 300, 4), out, lse, qt, qld, kvt, kvld, blk);
        double[] gotQ = read(dq);
        double[] gotKv = read(dkv);
        for (int at : new int[] {0, 5, 255 * qld + 1, 256 * qld + 3, 299 * qld + 2}) {
            check("tiled dq[" + at + "]", gotQ[at], fd(x -> reference(x, qld, kv, kvld, blk)[0], q, dout, at));
        }
        for (int at : new int[] {1, 7, 254 * kvld, 257 * kvld + 3, 299 * kvld + 1}) {
            check("tiled dkv[" + at + "]", gotKv[at], fd(x -> reference(q, qld, x, kvld, blk)[0], kv, dout, at));
        }
    }

    private static double fd(Reference.Fn f, double[] x, double[] dout, int i) {
        double[] v = x.clone();
        double h = 1e-6 * Math.max(1, Math.abs(v[i]));
        v[i] = x[i] + h;
        double plus = Reference.dot(dout, f.apply(v));
        v[i] = x[i] - h;
        double minus = Reference.dot(dout, f.apply(v));
        return (plus - minus) / (2 * h);
    }

    private static void check(String what, double got, double want) {
        assertClose(what, new double[] {want}, new double[] {got}, 2e-5, 1e-4);
    }

    /**
     * Two partial results over the two halves of a key range merge into the result over the whole range: the
     * first half with the causal mask (some rows see nothing of it when shifted), the second half fully.
     */
    @ParameterizedTest(name = "merge b={0} heads={1} kv={2} split at {3}")
    @CsvSource({"1, 2, 1, 3", "2, 4, 2, 1", "2, 2, 2, 0"})
    void mergingTwoPartsEqualsTheWhole(int b, int heads, int kvHeads, int split) {
        int hd = 3;
        int t = 5;
        int kvs = 7;
        SplittableRandom rng = new SplittableRandom(b * 31 + split);
        int qld = heads * hd;
        int kvld = 2 * kvHeads * hd;
        double[] q = random(rng, b * t * qld, 1.5);
        double[] kv = random(rng, b * kvs * kvld, 1.5);
        // the whole: query row i sees keys [0, i + 2]; the first part: keys [0, split) with that mask, the second the rest
        AttentionBlock whole = new AttentionBlock(b, heads, kvHeads, hd, t, 0, t, kvs, 0, kvs, 2);
        AttentionBlock first = new AttentionBlock(b, heads, kvHeads, hd, t, 0, t, kvs, 0, split, 2);
        AttentionBlock second = new AttentionBlock(b, heads, kvHeads, hd, t, 0, t, kvs, split, kvs - split, 2 - split);
        Tensor out = Tensor.allocateHost(DType.F32, b * t, qld);
        Tensor lse = Tensor.allocateHost(DType.F32, b, heads, t);
        Tensor part = Tensor.allocateHost(DType.F32, b * t, qld);
        Tensor partLse = Tensor.allocateHost(DType.F32, b, heads, t);
        Tensor qt = f32(q, q.length);
        Tensor kvt = f32(kv, kv.length);
        k.attentionBlockForward(out, lse, qt, qld, kvt, kvld, first);
        k.attentionBlockForward(part, partLse, qt, qld, kvt, kvld, second);
        k.attentionMerge(out, lse, part, partLse, whole);
        double[][] want = reference(q, qld, kv, kvld, whole);
        assertClose("merged output", want[0], read(out), 2e-6, 2e-5);
        assertClose("merged log-sum-exp", want[1], read(lse), 2e-6, 2e-5);
    }

    /** RoPE at arbitrary positions (a CP rank's two chunks), forward and backward (the inverse is the transpose). */
    @Test
    void ropeAtGivenPositions() {
        int b = 2;
        int t = 4;
        int heads = 2;
        int kvHeads = 1;
        int hd = 4;
        int[] positions = {1, 2, 5, 6}; // chunks 1 and 2 of 4 chunks of 2 (rank 1 of CP 2, sequence of 8)
        SplittableRandom rng = new SplittableRandom(4);
        int width = (heads + 2 * kvHeads) * hd;
        double[] qkv = random(rng, b * t * width, 1);
        double theta = 10000;
        int maxPos = 8;
        Tensor cos = Tensor.allocateHost(DType.F32, maxPos, hd / 2);
        Tensor sin = Tensor.allocateHost(DType.F32, maxPos, hd / 2);
        for (int p = 0; p < maxPos; p++) {
            for (int j = 0; j < hd / 2; j++) {
                double ang = p * Math.pow(theta, -2.0 * j / hd);
                cos.floats().put(p * hd / 2 + j, (float) Math.cos(ang));
                sin.floats().put(p * hd / 2 + j, (float) Math.sin(ang));
            }
        }
        Tensor pos = i32(positions, t);
        Tensor x = f32(qkv, b * t, width);
        k.rope(x, cos, sin, pos, b, t, heads, kvHeads, hd, false);
        assertClose("rope at positions", Reference.rope(qkv, b, t, heads, kvHeads, hd, theta, positions), read(x), 1e-6, 1e-5);
        double[] dout = random(rng, qkv.length, 1);
        Tensor d = f32(dout, b * t, width);
        k.rope(d, cos, sin, pos, b, t, heads, kvHeads, hd, true);
        assertClose("rope backward at positions",
                Reference.gradient(v -> Reference.rope(v, b, t, heads, kvHeads, hd, theta, positions), qkv.clone(), dout), read(d),
                1e-6, 1e-5);
    }

    /** Learned positions at arbitrary positions, for a block of rows starting inside a sequence (SP shards). */
    @ParameterizedTest(name = "positions table, first row {0}")
    @CsvSource({"0", "3", "6"})
    void learnedPositionsAtGivenPositions(int firstRow) {
        int t = 4;
        int c = 3;
        int rows = 5;
        int[] positions = {0, 1, 6, 7}; // rank 0 of CP 2 over sequences of 8
        double[] wpe = random(new SplittableRandom(firstRow), 8 * c, 1);
        double[] dx = random(new SplittableRandom(firstRow + 1), rows * c, 1);
        Tensor x = Tensor.allocateHost(DType.F32, rows, c);
        Tensor dwpe = Tensor.allocateHost(DType.F32, 8, c);
        k.addPositions(x, f32(wpe, 8, c), i32(positions, t), firstRow, rows, t, c);
        k.positionsBackward(dwpe, f32(dx, rows, c), i32(positions, t), firstRow, rows, t, c);
        double[] want = new double[rows * c];
        double[] wantGrad = new double[8 * c];
        for (int i = 0; i < rows; i++) {
            int p = positions[(firstRow + i) % t];
            for (int j = 0; j < c; j++) {
                want[i * c + j] = wpe[p * c + j];
                wantGrad[p * c + j] += dx[i * c + j];
            }
        }
        assertClose("positions of rows " + firstRow + ".." + (firstRow + rows), want, read(x), 0, 0);
        assertClose("position gradients", wantGrad, read(dwpe), 1e-7, 0);
    }
}
