package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.TestDevices;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Column- and row-parallel linear layers on 1, 2 and 4 ranks, with and without sequence parallelism,
 * against the dense layer computed in double on one thread: outputs, input gradients and each rank's
 * slice of the weight and bias gradients. Tolerance 2e-5 absolute: fp32 dot products of 8 terms of
 * magnitude ~1 carry about 1e-6 error; the TP reduction adds one more rounding per partial sum.
 * Plus Megatron-style closed forms: identity weights give back the input exactly, and a row-parallel
 * bias is added once (not tp times).
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class ParallelLinearTest {
    private static final int N = 8;
    private static final int IN = 8;
    private static final int OUT = 12;

    static double[] random(int n, long seed) {
        Random r = new Random(seed);
        double[] a = new double[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) r.nextGaussian(); // representable in fp32
        }
        return a;
    }

    /** A [rows, cols] F32 tensor from the sub-block [r0, r0+rows) x [c0, c0+cols) of a [*, ld] matrix. */
    static Tensor block(Device d, double[] m, int ld, int r0, int rows, int c0, int cols) {
        float[] v = new float[rows * cols];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                v[i * cols + j] = (float) m[(r0 + i) * ld + c0 + j];
            }
        }
        return TestDevices.tensor(d, v, rows, cols);
    }

    static void assertBlock(Device d, String what, double[] m, int ld, int r0, int c0, Tensor t, double tol) {
        int rows = t.dim(0);
        int cols = t.numel() == rows ? 1 : (int) (t.numel() / rows);
        float[] v = TestDevices.read(d, t);
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                assertEquals(m[(r0 + i) * ld + c0 + j], v[i * cols + j], tol, what + " at [" + i + "," + j + "]");
            }
        }
    }

    static Tensor zeros(Device d, int... shape) {
        return d.zeros(MemoryKind.WORKSPACE, DType.F32, shape);
    }

    /** Y = X A^T + b, dX = dY A, dA = dY^T X, db = colsum dY, all in double. */
    record Dense(double[] y, double[] dx, double[] dw, double[] db) {
        static Dense of(double[] x, double[] a, double[] b, double[] dy, int n, int in, int out) {
            double[] y = new double[n * out];
            double[] dx = new double[n * in];
            double[] dw = new double[out * in];
            double[] db = new double[out];
            for (int r = 0; r < n; r++) {
                for (int o = 0; o < out; o++) {
                    double s = b[o];
                    for (int i = 0; i < in; i++) {
                        s += x[r * in + i] * a[o * in + i];
                        dx[r * in + i] += dy[r * out + o] * a[o * in + i];
                        dw[o * in + i] += dy[r * out + o] * x[r * in + i];
                    }
                    y[r * out + o] = s;
                    db[o] += dy[r * out + o];
                }
            }
            return new Dense(y, dx, dw, db);
        }
    }

    @ParameterizedTest
    @CsvSource({"1,false", "2,false", "4,false", "2,true", "4,true"})
    void columnParallelMatchesDense(int tpSize, boolean sp) throws Exception {
        double[] x = random(N * IN, 1);
        double[] a = random(OUT * IN, 2);
        double[] b = random(OUT, 3);
        double[] dy = random(N * OUT, 4);
        Dense ref = Dense.of(x, a, b, dy, N, IN, OUT);
        LocalRanks.run(tpSize, (rank, world) -> {
            Device d = TestDevices.create();
            TensorParallel tp = new TensorParallel(world, sp);
            RankContext ctx = new RankContext(d, tp, Precision.FP32);
            int ol = OUT / tpSize;
            int rows = tp.localRows(N);
            int r0 = tp.firstLocalRow(N);
            Tensor w = block(d, a, IN, rank * ol, ol, 0, IN);
            Tensor bias = block(d, b, 1, rank * ol, ol, 0, 1).view(ol);
            Tensor dw = zeros(d, ol, IN);
            Tensor db = zeros(d, ol);
            ColumnParallelLinear layer = new ColumnParallelLinear(ctx, IN, ol, w, bias, dw, db, false, new Workspace(d));
            Tensor out = zeros(d, N, ol);
            Tensor used = layer.forward(block(d, x, IN, r0, rows, 0, IN), N, out, layer.gathersInput() ? zeros(d, N, IN) : null);
            assertBlock(d, "Y columns of rank " + rank, ref.y(), OUT, 0, rank * ol, out, 2e-5);
            Tensor dx = zeros(d, rows, IN);
            layer.backward(block(d, dy, OUT, 0, N, rank * ol, ol), dx, used, N);
            assertBlock(d, "dX (reduced over the group)", ref.dx(), IN, r0, 0, dx, 2e-5);
            assertBlock(d, "dA rows of rank " + rank, ref.dw(), IN, rank * ol, 0, dw, 2e-5);
            assertBlock(d, "db slice of rank " + rank, ref.db(), 1, rank * ol, 0, db.view(ol, 1), 2e-5);
            return null;
        });
    }

    @ParameterizedTest
    @CsvSource({"1", "2", "4"})
    void columnParallelGatheredOutputIsTheWholeY(int tpSize) throws Exception {
        double[] x = random(N * IN, 5);
        double[] a = random(OUT * IN, 6);
        double[] b = random(OUT, 7);
        double[] dy = random(N * OUT, 8);
        Dense ref = Dense.of(x, a, b, dy, N, IN, OUT);
        LocalRanks.run(tpSize, (rank, world) -> {
            Device d = TestDevices.create();
            TensorParallel tp = new TensorParallel(world, false);
            RankContext ctx = new RankContext(d, tp, Precision.FP32);
            int ol = OUT / tpSize;
            Tensor dw = zeros(d, ol, IN);
            ColumnParallelLinear layer = new ColumnParallelLinear(ctx, IN, ol, block(d, a, IN, rank * ol, ol, 0, IN),
                    block(d, b, 1, rank * ol, ol, 0, 1).view(ol), dw, zeros(d, ol), true, new Workspace(d));
            Tensor y = zeros(d, N, OUT);
            Tensor used = layer.forward(block(d, x, IN, 0, N, 0, IN), N, y, null);
            assertBlock(d, "gathered Y", ref.y(), OUT, 0, 0, y, 2e-5);
            Tensor dx = zeros(d, N, IN);
            layer.backward(block(d, dy, OUT, 0, N, 0, OUT), dx, used, N);
            assertBlock(d, "dX", ref.dx(), IN, 0, 0, dx, 2e-5);
            assertBlock(d, "dA rows of rank " + rank, ref.dw(), IN, rank * ol, 0, dw, 2e-5);
            return null;
        });
    }

    @ParameterizedTest
    @CsvSource({"1,false", "2,false", "4,false", "2,true", "4,true"})
    void rowParallelMatchesDense(int tpSize, boolean sp) throws Exception {
        double[] x = random(N * IN, 11);
        double[] a = random(OUT * IN, 12);
        double[] b = random(OUT, 13);
        double[] dy = random(N * OUT, 14);
        Dense ref = Dense.of(x, a, b, dy, N, IN, OUT);
        LocalRanks.run(tpSize, (rank, world) -> {
            Device d = TestDevices.create();
            TensorParallel tp = new TensorParallel(world, sp);
            RankContext ctx = new RankContext(d, tp, Precision.FP32);
            int il = IN / tpSize;
            int rows = tp.localRows(N);
            int r0 = tp.firstLocalRow(N);
            Tensor dw = zeros(d, OUT, il);
            Tensor db = zeros(d, OUT);
            RowParallelLinear layer = new RowParallelLinear(ctx, il, OUT, block(d, a, IN, 0, OUT, rank * il, il),
                    block(d, b, 1, 0, OUT, 0, 1).view(OUT), dw, db, new Workspace(d));
            Tensor y = zeros(d, rows, OUT);
            Tensor xs = block(d, x, IN, 0, N, rank * il, il);
            layer.forward(xs, N, y);
            assertBlock(d, "Y rows (reduced)", ref.y(), OUT, r0, 0, y, 2e-5);
            Tensor dx = zeros(d, N, il);
            layer.backward(block(d, dy, OUT, r0, rows, 0, OUT), dx, xs, N);
            assertBlock(d, "dX columns of rank " + rank, ref.dx(), IN, 0, rank * il, dx, 2e-5);
            assertBlock(d, "dA columns of rank " + rank, ref.dw(), IN, 0, rank * il, dw, 2e-5);
            assertBlock(d, "db, complete on every rank", ref.db(), 1, 0, 0, db.view(OUT, 1), 2e-5);
            return null;
        });
    }

    /** Megatron's closed form: with A = I the column layer returns X, the row layer X + b with b added once. */
    @ParameterizedTest
    @CsvSource({"1,false", "2,false", "4,false", "2,true", "4,true"})
    void identityWeightsReturnTheInputAndTheBiasOnce(int tpSize, boolean sp) throws Exception {
        int c = 8;
        double[] x = random(N * c, 21);
        double[] eye = new double[c * c];
        for (int i = 0; i < c; i++) {
            eye[i * c + i] = 1;
        }
        LocalRanks.run(tpSize, (rank, world) -> {
            Device d = TestDevices.create();
            TensorParallel tp = new TensorParallel(world, sp);
            RankContext ctx = new RankContext(d, tp, Precision.FP32);
            int cl = c / tpSize;
            int rows = tp.localRows(N);
            int r0 = tp.firstLocalRow(N);
            Workspace ws = new Workspace(d);
            ColumnParallelLinear col = new ColumnParallelLinear(ctx, c, cl, block(d, eye, c, rank * cl, cl, 0, c), null,
                    zeros(d, cl, c), null, false, ws);
            Tensor mid = zeros(d, N, cl);
            col.forward(block(d, x, c, r0, rows, 0, c), N, mid, col.gathersInput() ? zeros(d, N, c) : null);
            assertBlock(d, "identity column layer: own columns of X", x, c, 0, rank * cl, mid, 0);
            float[] oneValues = new float[c];
            java.util.Arrays.fill(oneValues, 1f);
            Tensor ones = TestDevices.tensor(d, oneValues, c);
            RowParallelLinear row = new RowParallelLinear(ctx, cl, c, block(d, eye, c, 0, c, rank * cl, cl), ones,
                    zeros(d, c, cl), zeros(d, c), ws);
            Tensor y = zeros(d, rows, c);
            row.forward(mid, N, y);
            double[] xPlus1 = x.clone();
            for (int i = 0; i < xPlus1.length; i++) {
                xPlus1[i] += 1;
            }
            assertBlock(d, "identity row layer: X + b, bias added once", xPlus1, c, r0, 0, y, 1e-6);
            return null;
        });
    }
}
