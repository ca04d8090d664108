package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import org.sparkatron.tensor.Tensor;

/**
 * LayerNorm and RMSNorm on the CPU, for {@link CpuKernels} (see {@link org.sparkatron.device.Kernels} for each
 * kernel's contract). Rows run on the rank's threads ({@link CpuWorkers}); the weight gradients are summed over
 * the rows column by column, each column in row order, so the split never changes a bit. With {@code simd} the
 * loops are {@link SimdNorms}' (the same column sums bit for bit; a row's statistics summed in vector lanes,
 * so the normalised rows differ from the scalar loops' in the last bits). Stateless.
 */
final class CpuNorms {
    private CpuNorms() {
    }

    static void layerNormForward(boolean simd, Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor w, Tensor b, int n,
                                 int c, float eps) {
        if (simd) {
            CpuWorkers.forRows(n, 3L * c, (r0, r1) -> {
                float[] stats = new float[2];
                ByteBuffer ob = out.hostBuffer();
                ByteBuffer xb = x.hostBuffer();
                ByteBuffer wb = w.hostBuffer();
                ByteBuffer bb = b.hostBuffer();
                FloatBuffer ms = mean.floats();
                FloatBuffer rs = rstd.floats();
                for (int r = r0; r < r1; r++) {
                    SimdNorms.layerNormRow(ob, xb, wb, bb, r * c, c, eps, stats);
                    ms.put(r, stats[0]);
                    rs.put(r, stats[1]);
                }
            });
            return;
        }
        FloatBuffer o = out.floats();
        FloatBuffer xs = x.floats();
        FloatBuffer ws = w.floats();
        FloatBuffer bs = b.floats();
        FloatBuffer ms = mean.floats();
        FloatBuffer rs = rstd.floats();
        CpuWorkers.forRows(n, 3L * c, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                int base = r * c;
                double sum = 0;
                for (int j = 0; j < c; j++) {
                    sum += xs.get(base + j);
                }
                float m = (float) (sum / c);
                double var = 0;
                for (int j = 0; j < c; j++) {
                    float dv = xs.get(base + j) - m;
                    var += dv * dv;
                }
                float s = (float) (1.0 / Math.sqrt(var / c + eps));
                for (int j = 0; j < c; j++) {
                    o.put(base + j, (xs.get(base + j) - m) * s * ws.get(j) + bs.get(j));
                }
                ms.put(r, m);
                rs.put(r, s);
            }
        });
    }

    static void layerNormBackward(boolean simd, Tensor dx, Tensor dw, Tensor db, Tensor dout, Tensor x, Tensor w,
                                  Tensor mean, Tensor rstd, int n, int c) {
        if (simd) {
            float[] ms = new float[n];
            float[] rs = new float[n];
            mean.floats().get(0, ms);
            rstd.floats().get(0, rs);
            CpuWorkers.forRows(n, 3L * c, (r0, r1) -> {
                ByteBuffer dxb = dx.hostBuffer();
                ByteBuffer db0 = dout.hostBuffer();
                ByteBuffer xb = x.hostBuffer();
                ByteBuffer wb = w.hostBuffer();
                for (int r = r0; r < r1; r++) {
                    SimdNorms.layerNormRowBackward(dxb, db0, xb, wb, r * c, c, ms[r], rs[r]);
                }
            });
            CpuWorkers.forRows(c, 2L * n, (j0, j1) -> {
                double[] dwAcc = new double[j1 - j0];
                double[] dbAcc = new double[j1 - j0];
                SimdNorms.layerNormColumns(dout.hostBuffer(), x.hostBuffer(), ms, rs, n, c, j0, j1, dwAcc, dbAcc);
                FloatBuffer dws = dw.floats();
                FloatBuffer dbs = db.floats();
                for (int j = j0; j < j1; j++) {
                    dws.put(j, (float) (dws.get(j) + dwAcc[j - j0]));
                    dbs.put(j, (float) (dbs.get(j) + dbAcc[j - j0]));
                }
            });
            return;
        }
        FloatBuffer dxs = dx.floats();
        FloatBuffer dws = dw.floats();
        FloatBuffer dbs = db.floats();
        FloatBuffer d = dout.floats();
        FloatBuffer xs = x.floats();
        FloatBuffer ws = w.floats();
        FloatBuffer ms = mean.floats();
        FloatBuffer rs = rstd.floats();
        // dx row by row; dw and db column by column, each column summed over the rows in row order (as one
        // thread would), so the split never changes a bit
        CpuWorkers.forRows(n, 3L * c, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                int base = r * c;
                float m = ms.get(r);
                float s = rs.get(r);
                // dnorm = dout * w; dx = s * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat))
                double dnormMean = 0;
                double dnormXhatMean = 0;
                for (int j = 0; j < c; j++) {
                    float xhat = (xs.get(base + j) - m) * s;
                    float dnorm = d.get(base + j) * ws.get(j);
                    dnormMean += dnorm;
                    dnormXhatMean += dnorm * xhat;
                }
                float a = (float) (dnormMean / c);
                float bcoef = (float) (dnormXhatMean / c);
                for (int j = 0; j < c; j++) {
                    float xhat = (xs.get(base + j) - m) * s;
                    float dnorm = d.get(base + j) * ws.get(j);
                    dxs.put(base + j, dxs.get(base + j) + s * (dnorm - a - xhat * bcoef));
                }
            }
        });
        CpuWorkers.forRows(c, 2L * n, (j0, j1) -> {
            double[] dwAcc = new double[j1 - j0];
            double[] dbAcc = new double[j1 - j0];
            for (int r = 0; r < n; r++) {
                int base = r * c;
                float m = ms.get(r);
                float s = rs.get(r);
                for (int j = j0; j < j1; j++) {
                    float xhat = (xs.get(base + j) - m) * s;
                    dwAcc[j - j0] += d.get(base + j) * xhat;
                    dbAcc[j - j0] += d.get(base + j);
                }
            }
            for (int j = j0; j < j1; j++) {
                dws.put(j, (float) (dws.get(j) + dwAcc[j - j0]));
                dbs.put(j, (float) (dbs.get(j) + dbAcc[j - j0]));
            }
        });
    }

    static void rmsNormForward(boolean simd, Tensor out, Tensor rstd, Tensor x, Tensor w, int n, int c, float eps) {
        CpuWorkers.forRows(n, 2L * c, (r0, r1) -> {
            FloatBuffer rs = rstd.floats();
            if (simd) {
                ByteBuffer ob = out.hostBuffer();
                ByteBuffer xb = x.hostBuffer();
                ByteBuffer wb = w.hostBuffer();
                for (int r = r0; r < r1; r++) {
                    rs.put(r, SimdNorms.rmsNormRow(ob, xb, wb, r * c, c, eps));
                }
                return;
            }
            FloatBuffer o = out.floats();
            FloatBuffer xs = x.floats();
            FloatBuffer ws = w.floats();
            for (int r = r0; r < r1; r++) {
                int base = r * c;
                double ss = 0;
                for (int j = 0; j < c; j++) {
                    float v = xs.get(base + j);
                    ss += v * v;
                }
                float s = (float) (1.0 / Math.sqrt(ss / c + eps));
                for (int j = 0; j < c; j++) {
                    o.put(base + j, xs.get(base + j) * s * ws.get(j));
                }
                rs.put(r, s);
            }
        });
    }

    static void rmsNormBackward(boolean simd, Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor rstd, int n,
                                int c) {
        float[] rs = new float[n];
        rstd.floats().get(0, rs);
        // y = x * s * w, s = (mean(x^2)+eps)^-1/2: dx = s * (dnorm - xhat * mean(dnorm * xhat)), row by row
        CpuWorkers.forRows(n, 3L * c, (r0, r1) -> {
            if (simd) {
                ByteBuffer dxb = dx.hostBuffer();
                ByteBuffer db = dout.hostBuffer();
                ByteBuffer xb = x.hostBuffer();
                ByteBuffer wb = w.hostBuffer();
                for (int r = r0; r < r1; r++) {
                    SimdNorms.rmsNormRowBackward(dxb, db, xb, wb, r * c, c, rs[r]);
                }
                return;
            }
            FloatBuffer dxs = dx.floats();
            FloatBuffer d = dout.floats();
            FloatBuffer xs = x.floats();
            FloatBuffer ws = w.floats();
            for (int r = r0; r < r1; r++) {
                int base = r * c;
                float s = rs[r];
                double dot = 0;
                for (int j = 0; j < c; j++) {
                    dot += d.get(base + j) * ws.get(j) * (xs.get(base + j) * s);
                }
                float k = (float) (dot / c);
                for (int j = 0; j < c; j++) {
                    float xhat = xs.get(base + j) * s;
                    float dnorm = d.get(base + j) * ws.get(j);
                    dxs.put(base + j, dxs.get(base + j) + s * (dnorm - xhat * k));
                }
            }
        });
        // dw column by column, each column summed over the rows in row order: the split never changes a bit
        CpuWorkers.forRows(c, n, (j0, j1) -> {
            double[] dwAcc = new double[j1 - j0];
            if (simd) {
                SimdNorms.rmsNormColumns(dout.hostBuffer(), x.hostBuffer(), rs, n, c, j0, j1, dwAcc);
            } else {
                FloatBuffer d = dout.floats();
                FloatBuffer xs = x.floats();
                for (int r = 0; r < n; r++) {
                    for (int j = j0; j < j1; j++) {
                        dwAcc[j - j0] += d.get(r * c + j) * (xs.get(r * c + j) * rs[r]);
                    }
                }
            }
            FloatBuffer dws = dw.floats();
            for (int j = j0; j < j1; j++) {
                dws.put(j, (float) (dws.get(j) + dwAcc[j - j0]));
            }
        });
    }
}
