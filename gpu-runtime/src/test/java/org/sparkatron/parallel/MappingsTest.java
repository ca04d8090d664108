package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Every mapping's forward and backward against its definition, with inputs that differ per rank, for
 * groups of 1, 2 and 4; and each sequence mapping's backward as the adjoint of its forward: sum over
 * ranks of {@code <forward(x), g>} equals sum over ranks of {@code <x, backward(g)>} (for copy/reduce one
 * side is a replicated tensor, counted once, so the definition checks stand alone there). Values are small multiples of
 * 1/8 and 1/1024, so sums of up to 4 terms are exact in fp32: equality is exact.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class MappingsTest {
    private static final int ROWS = 4;  // rows per rank-block
    private static final int COLS = 3;  // columns per rank-block

    /** A distinct value for (rank, element, tag). */
    static float val(int rank, int i, int tag) {
        return (rank + 1) * 0.125f + i / 1024f + tag;
    }

    static float[] values(int n, int rank, int tag) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = val(rank, i, tag);
        }
        return v;
    }

    /** What one rank observed: forward output, backward output, and the two inner products. */
    record Seen(float[] fwd, float[] bwd, double fwdDot, double bwdDot) {
    }

    interface Factory {
        Mapping make(RankContext ctx);
    }

    private static List<Seen> runMapping(int tpSize, Factory f, int inLen, int outLen) throws Exception {
        return LocalRanks.run(tpSize, (rank, world) -> {
            Device d = TestDevices.create();
            RankContext ctx = new RankContext(d, new TensorParallel(world, false), Precision.FP32);
            Mapping m = f.make(ctx);
            float[] xv = values(inLen, rank, 0);
            Tensor x = TestDevices.tensor(d, xv, inLen);
            Tensor y = d.allocate(MemoryKind.WORKSPACE, DType.F32, outLen);
            m.forward(x, y);
            float[] gv = values(outLen, rank, 1);
            Tensor g = TestDevices.tensor(d, gv, outLen);
            Tensor dx = d.allocate(MemoryKind.WORKSPACE, DType.F32, inLen);
            m.backward(g, dx);
            float[] yv = TestDevices.read(d, y);
            float[] dxv = TestDevices.read(d, dx);
            return new Seen(yv, dxv, dot(yv, gv), dot(xv, dxv));
        });
    }

    static double dot(float[] a, float[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += (double) a[i] * b[i];
        }
        return s;
    }

    private static void assertAdjoint(List<Seen> seen, String name) {
        double f = 0;
        double b = 0;
        for (Seen s : seen) {
            f += s.fwdDot();
            b += s.bwdDot();
        }
        assertEquals(f, b, 1e-9 * Math.abs(f), name + ": backward is the adjoint of forward");
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void copyToTensorRegion(int tp) throws Exception {
        int n = ROWS * COLS;
        List<Seen> s = runMapping(tp, Mappings.CopyToTensorRegion::new, n, n);
        for (int r = 0; r < tp; r++) {
            float[] sum = new float[n];
            for (int i = 0; i < n; i++) {
                sum[i] = val(r, i, 0);
                float g = 0;
                for (int q = 0; q < tp; q++) {
                    g += val(q, i, 1);
                }
                assertEquals(g, s.get(r).bwd()[i], 0f, "backward: sum of all ranks' gradients");
            }
            assertArrayEquals(sum, s.get(r).fwd(), "forward: identity");
        }
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void reduceFromTensorRegion(int tp) throws Exception {
        int n = ROWS * COLS;
        List<Seen> s = runMapping(tp, Mappings.ReduceFromTensorRegion::new, n, n);
        for (int r = 0; r < tp; r++) {
            for (int i = 0; i < n; i++) {
                float x = 0;
                for (int q = 0; q < tp; q++) {
                    x += val(q, i, 0);
                }
                assertEquals(x, s.get(r).fwd()[i], 0f, "forward: sum of all ranks' inputs");
                assertEquals(val(r, i, 1), s.get(r).bwd()[i], 0f, "backward: identity");
            }
        }
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void scatterToSequenceRegion(int tp) throws Exception {
        int block = ROWS * COLS;
        List<Seen> s = runMapping(tp, Mappings.ScatterToSequenceRegion::new, block * tp, block);
        for (int r = 0; r < tp; r++) {
            for (int i = 0; i < block; i++) {
                assertEquals(val(r, r * block + i, 0), s.get(r).fwd()[i], 0f, "forward: own row block");
            }
            for (int q = 0; q < tp; q++) {
                for (int i = 0; i < block; i++) {
                    assertEquals(val(q, i, 1), s.get(r).bwd()[q * block + i], 0f, "backward: all-gather of row blocks");
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void gatherFromSequenceRegion(int tp) throws Exception {
        int block = ROWS * COLS;
        List<Seen> s = runMapping(tp, Mappings.GatherFromSequenceRegion::new, block, block * tp);
        for (int r = 0; r < tp; r++) {
            for (int q = 0; q < tp; q++) {
                for (int i = 0; i < block; i++) {
                    assertEquals(val(q, i, 0), s.get(r).fwd()[q * block + i], 0f, "forward: all-gather of row blocks");
                }
            }
            for (int i = 0; i < block; i++) {
                float g = 0;
                for (int q = 0; q < tp; q++) {
                    g += val(q, r * block + i, 1);
                }
                assertEquals(g, s.get(r).bwd()[i], 0f, "backward: reduce-scatter");
            }
        }
        assertAdjoint(s, "gather-sequence");
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void reduceScatterToSequenceRegion(int tp) throws Exception {
        int block = ROWS * COLS;
        List<Seen> s = runMapping(tp, Mappings.ReduceScatterToSequenceRegion::new, block * tp, block);
        for (int r = 0; r < tp; r++) {
            for (int i = 0; i < block; i++) {
                float x = 0;
                for (int q = 0; q < tp; q++) {
                    x += val(q, r * block + i, 0);
                }
                assertEquals(x, s.get(r).fwd()[i], 0f, "forward: reduce-scatter");
            }
            for (int q = 0; q < tp; q++) {
                for (int i = 0; i < block; i++) {
                    assertEquals(val(q, i, 1), s.get(r).bwd()[q * block + i], 0f, "backward: all-gather");
                }
            }
        }
        assertAdjoint(s, "reduce-scatter-sequence");
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void scatterToTensorRegion(int tp) throws Exception {
        int full = COLS * tp;
        List<Seen> s = runMapping(tp, t -> new Mappings.ScatterToTensorRegion(t, ROWS, COLS), ROWS * full, ROWS * COLS);
        for (int r = 0; r < tp; r++) {
            for (int row = 0; row < ROWS; row++) {
                for (int j = 0; j < COLS; j++) {
                    assertEquals(val(r, row * full + r * COLS + j, 0), s.get(r).fwd()[row * COLS + j], 0f, "forward: own columns");
                    for (int q = 0; q < tp; q++) {
                        assertEquals(val(q, row * COLS + j, 1), s.get(r).bwd()[row * full + q * COLS + j], 0f,
                                "backward: columns gathered in rank order");
                    }
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void gatherFromTensorRegion(int tp) throws Exception {
        int full = COLS * tp;
        List<Seen> s = runMapping(tp, t -> new Mappings.GatherFromTensorRegion(t, ROWS, COLS), ROWS * COLS, ROWS * full);
        for (int r = 0; r < tp; r++) {
            for (int row = 0; row < ROWS; row++) {
                for (int j = 0; j < COLS; j++) {
                    for (int q = 0; q < tp; q++) {
                        assertEquals(val(q, row * COLS + j, 0), s.get(r).fwd()[row * full + q * COLS + j], 0f,
                                "forward: rank q's columns at block q");
                    }
                    assertEquals(val(r, row * full + r * COLS + j, 1), s.get(r).bwd()[row * COLS + j], 0f,
                            "backward: own columns of the gradient");
                }
            }
        }
    }
}
