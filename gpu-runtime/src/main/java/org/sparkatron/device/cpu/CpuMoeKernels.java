package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import org.sparkatron.device.MoeKernels;
import org.sparkatron.device.MoeRouting;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The mixture-of-experts kernels of {@link CpuKernels} (its {@link CpuKernels#moe()}; the contracts are on
 * {@link MoeKernels}): routing, load-balancing losses, capacity, dispatch and combine,
 * chunk reordering for expert parallelism, and grouped GEMMs through OpenBLAS. Router arithmetic is done in
 * double per token and stored in float; row sums are accumulated in a fixed order, so results are
 * deterministic. Device-side counts and offsets are read here, inside the kernel, as a GPU kernel would.
 * Stateless; every call runs to completion.
 */
final class CpuMoeKernels implements MoeKernels {
    /** The scores of one token: softmax over all experts, or sigmoids. */
    private static void scores(FloatBuffer logits, int t, int e, boolean sigmoid, double[] s) {
        int base = t * e;
        if (sigmoid) {
            for (int i = 0; i < e; i++) {
                s[i] = 1.0 / (1.0 + Math.exp(-logits.get(base + i)));
            }
            return;
        }
        double max = Double.NEGATIVE_INFINITY;
        for (int i = 0; i < e; i++) {
            max = Math.max(max, logits.get(base + i));
        }
        double sum = 0;
        for (int i = 0; i < e; i++) {
            s[i] = Math.exp(logits.get(base + i) - max);
            sum += s[i];
        }
        for (int i = 0; i < e; i++) {
            s[i] /= sum;
        }
    }

    /** The k largest of s (+ bias when not null; ties: lower index), in decreasing order, into idx. */
    private static void topK(double[] s, FloatBuffer bias, int e, int k, int[] idx) {
        boolean[] taken = new boolean[e];
        for (int j = 0; j < k; j++) {
            int best = -1;
            double bestV = 0;
            for (int i = 0; i < e; i++) {
                double v = bias == null ? s[i] : s[i] + bias.get(i);
                if (!taken[i] && (best < 0 || v > bestV)) {
                    best = i;
                    bestV = v;
                }
            }
            taken[best] = true;
            idx[j] = best;
        }
    }

    @Override
    public void route(Tensor logits, Tensor experts, Tensor probs, Tensor scoresOut, Tensor bias, int n, int e, int k,
                      MoeRouting r) {
        FloatBuffer l = logits.floats();
        FloatBuffer b = bias == null ? null : bias.floats();
        IntBuffer ex = experts.ints();
        FloatBuffer p = probs.floats();
        FloatBuffer so = scoresOut == null ? null : scoresOut.floats();
        double[] s = new double[e];
        int[] idx = new int[k];
        for (int t = 0; t < n; t++) {
            scores(l, t, e, r.sigmoid(), s);
            topK(s, b, e, k, idx);
            double top = 0;
            for (int j = 0; j < k; j++) {
                top += s[idx[j]];
            }
            for (int j = 0; j < k; j++) {
                ex.put(t * k + j, idx[j]);
                p.put(t * k + j, (float) ((r.normTopK() ? s[idx[j]] / top : s[idx[j]]) * r.scale()));
            }
            if (so != null) {
                double all = 0;
                for (int i = 0; i < e; i++) {
                    all += s[i];
                }
                for (int i = 0; i < e; i++) {
                    so.put(t * e + i, (float) (r.sigmoid() ? s[i] / all : s[i]));
                }
            }
        }
    }

    private static int[] counts(IntBuffer ex, int n, int e, int k) {
        int[] counts = new int[e];
        for (int i = 0; i < n * k; i++) {
            int x = ex.get(i);
            if (x >= 0) {
                counts[x]++;
            }
        }
        return counts;
    }

    @Override
    public void auxLoss(Tensor scores, Tensor experts, Tensor auxGrad, Tensor acc, int slot, int n, int e, int k,
                        float gradWeight, double reportWeight) {
        int[] counts = counts(experts.ints(), n, e, k);
        FloatBuffer s = scores.floats();
        double[] col = new double[e];
        for (int t = 0; t < n; t++) {
            for (int i = 0; i < e; i++) {
                col[i] += s.get(t * e + i);
            }
        }
        double factor = (double) e / ((double) k * n * n);
        double loss = 0;
        FloatBuffer g = auxGrad.floats();
        for (int i = 0; i < e; i++) {
            loss += counts[i] * col[i];
            g.put(i, (float) (gradWeight * factor * counts[i]));
        }
        addScalar(acc, slot, reportWeight * factor * loss);
    }

    private static double lse(FloatBuffer l, int t, int e) {
        double max = Double.NEGATIVE_INFINITY;
        for (int i = 0; i < e; i++) {
            max = Math.max(max, l.get(t * e + i));
        }
        double sum = 0;
        for (int i = 0; i < e; i++) {
            sum += Math.exp(l.get(t * e + i) - max);
        }
        return max + Math.log(sum);
    }

    @Override
    public void zLoss(Tensor logits, Tensor acc, int slot, int n, int e, double reportWeight) {
        FloatBuffer l = logits.floats();
        double z = 0;
        for (int t = 0; t < n; t++) {
            double v = lse(l, t, e);
            z += v * v;
        }
        addScalar(acc, slot, reportWeight * z / n);
    }

    @Override
    public void capacity(Tensor routed, Tensor probs, Tensor experts, Tensor acc, int slot, int n, int e, int k, int cap,
                         double reportWeight) {
        IntBuffer ex = experts.ints();
        IntBuffer out = routed.ints();
        FloatBuffer p = probs.floats();
        int[] counts = counts(ex, n, e, k);
        int[][] members = new int[e][];
        int[] fill = new int[e];
        for (int i = 0; i < e; i++) {
            members[i] = new int[counts[i]];
        }
        for (int a = 0; a < n * k; a++) {
            int x = ex.get(a);
            out.put(a, x);
            if (x >= 0) {
                members[x][fill[x]++] = a;
            }
        }
        long dropped = 0;
        for (int i = 0; i < e; i++) {
            if (counts[i] <= cap) {
                continue;
            }
            Integer[] order = new Integer[counts[i]];
            for (int m = 0; m < order.length; m++) {
                order[m] = members[i][m];
            }
            java.util.Arrays.sort(order, (x, y) -> { // higher weight first; ties: lower token (assignments are token-major)
                int c = Float.compare(p.get(y), p.get(x));
                return c != 0 ? c : Integer.compare(x, y);
            });
            for (int m = cap; m < order.length; m++) {
                out.put(order[m], -1);
                p.put(order[m], 0f);
                dropped++;
            }
        }
        if (acc != null) {
            addScalar(acc, slot, reportWeight * dropped);
        }
    }

    @Override
    public void permute(Tensor out, Tensor rowMap, Tensor countsOut, Tensor offsets, Tensor x, Tensor routed, int n, int c,
                        int e, int k, int capacity) {
        IntBuffer ex = routed.ints();
        int[] counts = counts(ex, n, e, k);
        int[] next = new int[e];
        IntBuffer off = offsets == null ? null : offsets.ints();
        int at = 0;
        for (int i = 0; i < e; i++) {
            next[i] = capacity > 0 ? i * capacity : at;
            at += counts[i];
            if (off != null) {
                off.put(i, next[i]);
            }
        }
        if (off != null) {
            off.put(e, capacity > 0 ? e * capacity : at);
        }
        IntBuffer map = rowMap.ints();
        FloatBuffer xs = x.floats();
        FloatBuffer o = out.floats();
        float[] row = new float[c];
        for (int t = 0; t < n; t++) {
            xs.get(t * c, row);
            for (int j = 0; j < k; j++) {
                int g = ex.get(t * k + j);
                if (g < 0) {
                    map.put(t * k + j, -1);
                    continue;
                }
                int r = next[g]++;
                map.put(t * k + j, r);
                o.put(r * c, row);
            }
        }
        if (capacity > 0) {
            float[] zeros = new float[c];
            for (int i = 0; i < e; i++) {
                for (int r = i * capacity + counts[i]; r < (i + 1) * capacity; r++) {
                    o.put(r * c, zeros);
                }
            }
        }
        IntBuffer co = countsOut.ints();
        for (int i = 0; i < e; i++) {
            co.put(i, counts[i]);
        }
    }

    @Override
    public void permuteBackward(Tensor dx, Tensor dperm, Tensor rowMap, int n, int c, int k) {
        IntBuffer map = rowMap.ints();
        FloatBuffer d = dx.floats();
        FloatBuffer dp = dperm.floats();
        for (int t = 0; t < n; t++) {
            for (int j = 0; j < k; j++) {
                int r = map.get(t * k + j);
                if (r >= 0) {
                    for (int i = 0; i < c; i++) {
                        d.put(t * c + i, d.get(t * c + i) + dp.get(r * c + i));
                    }
                }
            }
        }
    }

    @Override
    public void unpermute(Tensor out, Tensor y, Tensor rowMap, Tensor probs, int n, int c, int k) {
        IntBuffer map = rowMap.ints();
        FloatBuffer o = out.floats();
        FloatBuffer ys = y.floats();
        FloatBuffer p = probs.floats();
        float[] acc = new float[c];
        for (int t = 0; t < n; t++) {
            java.util.Arrays.fill(acc, 0f);
            for (int j = 0; j < k; j++) {
                int r = map.get(t * k + j);
                if (r >= 0) {
                    float w = p.get(t * k + j);
                    for (int i = 0; i < c; i++) {
                        acc[i] += w * ys.get(r * c + i);
                    }
                }
            }
            o.put(t * c, acc);
        }
    }

    @Override
    public void unpermuteBackward(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rowMap, Tensor probs, int rows,
                                  int n, int c, int k) {
        IntBuffer map = rowMap.ints();
        FloatBuffer d = dy.floats();
        FloatBuffer g = dout.floats();
        FloatBuffer ys = y.floats();
        FloatBuffer p = probs.floats();
        FloatBuffer dp = dprobs.floats();
        float[] zeros = new float[c];
        for (int r = 0; r < rows; r++) {
            d.put(r * c, zeros);
        }
        for (int t = 0; t < n; t++) {
            for (int j = 0; j < k; j++) {
                int r = map.get(t * k + j);
                if (r < 0) {
                    dp.put(t * k + j, 0f);
                    continue;
                }
                float w = p.get(t * k + j);
                double dot = 0;
                for (int i = 0; i < c; i++) {
                    float gi = g.get(t * c + i);
                    d.put(r * c + i, w * gi);
                    dot += (double) gi * ys.get(r * c + i);
                }
                dp.put(t * k + j, (float) dot);
            }
        }
    }

    @Override
    public void routeBackward(Tensor dlogits, Tensor dprobs, Tensor logits, Tensor experts, Tensor auxGrad, float zWeight,
                              int n, int e, int k, MoeRouting r) {
        FloatBuffer l = logits.floats();
        FloatBuffer dl = dlogits.floats();
        FloatBuffer dp = dprobs.floats();
        IntBuffer ex = experts.ints();
        FloatBuffer ag = auxGrad == null ? null : auxGrad.floats();
        double[] s = new double[e];
        double[] ds = new double[e];
        for (int t = 0; t < n; t++) {
            scores(l, t, e, r.sigmoid(), s);
            java.util.Arrays.fill(ds, 0);
            // top-k weights: p_j = scale * u_j / U (normTopK) or scale * u_j, u_j = s[experts[t, j]]
            double top = 0;
            double dot = 0;
            for (int j = 0; j < k; j++) {
                double u = s[ex.get(t * k + j)];
                top += u;
                dot += dp.get(t * k + j) * u;
            }
            for (int j = 0; j < k; j++) {
                int i = ex.get(t * k + j);
                double d = dp.get(t * k + j);
                ds[i] += r.normTopK() ? r.scale() * (d - dot / top) / top : r.scale() * d;
            }
            double all = 0;
            for (int i = 0; i < e; i++) {
                all += s[i];
            }
            if (ag != null) { // the load-balancing scores: a = s (softmax) or s / sum(s) (sigmoid)
                double ga = 0;
                for (int i = 0; i < e; i++) {
                    ga += ag.get(i) * (r.sigmoid() ? s[i] / all : s[i]);
                }
                for (int i = 0; i < e; i++) {
                    ds[i] += r.sigmoid() ? (ag.get(i) - ga) / all : ag.get(i);
                }
            }
            double sds = 0;
            for (int i = 0; i < e; i++) {
                sds += s[i] * ds[i];
            }
            for (int i = 0; i < e; i++) {
                double v = r.sigmoid() ? ds[i] * s[i] * (1 - s[i]) : s[i] * (ds[i] - sds);
                dl.put(t * e + i, (float) v);
            }
            if (zWeight != 0) {
                double lse = lse(l, t, e);
                for (int i = 0; i < e; i++) {
                    double soft = Math.exp(l.get(t * e + i) - lse);
                    dl.put(t * e + i, (float) (dl.get(t * e + i) + 2.0 * zWeight * lse * soft));
                }
            }
        }
    }

    @Override
    public void sortChunks(Tensor out, Tensor offsets, Tensor in, Tensor countsT, int a, int b, int c, boolean inverse) {
        IntBuffer cnt = countsT.ints();
        int[] counts = new int[a * b];
        for (int i = 0; i < a * b; i++) {
            counts[i] = cnt.get(i);
        }
        long[] iMajor = new long[a * b];
        long[] jMajor = new long[a * b];
        long at = 0;
        for (int i = 0; i < a; i++) {
            for (int j = 0; j < b; j++) {
                iMajor[i * b + j] = at;
                at += counts[i * b + j];
            }
        }
        at = 0;
        IntBuffer off = offsets == null ? null : offsets.ints();
        for (int j = 0; j < b; j++) {
            if (off != null) {
                off.put(j, (int) at);
            }
            for (int i = 0; i < a; i++) {
                jMajor[i * b + j] = at;
                at += counts[i * b + j];
            }
        }
        if (off != null) {
            off.put(b, (int) at);
        }
        ByteBuffer src = in.hostBuffer();
        ByteBuffer dst = out.hostBuffer();
        long rowBytes = 4L * c;
        for (int x = 0; x < a * b; x++) {
            long from = (inverse ? jMajor[x] : iMajor[x]) * rowBytes;
            long to = (inverse ? iMajor[x] : jMajor[x]) * rowBytes;
            long len = counts[x] * rowBytes;
            if (len > 0) {
                dst.put((int) to, src, (int) from, (int) len);
            }
        }
    }

    @Override
    public void groupedLinearForward(Tensor out, Tensor x, Tensor w, Tensor offsets, int groups, int in, int outF) {
        IntBuffer off = offsets.ints();
        for (int g = 0; g < groups; g++) {
            int r0 = off.get(g);
            int rows = off.get(g + 1) - r0;
            if (rows > 0) {
                Blas.sgemm(false, true, rows, outF, in, 1f, x, (long) r0 * in, in, w, (long) g * outF * in, in, 0f, out,
                        (long) r0 * outF, outF);
            }
        }
    }

    @Override
    public void groupedLinearBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets, int groups, int in,
                                int outF) {
        IntBuffer off = offsets.ints();
        for (int g = 0; g < groups; g++) {
            int r0 = off.get(g);
            int rows = off.get(g + 1) - r0;
            if (rows <= 0) {
                continue;
            }
            if (dx != null) {
                Blas.sgemm(false, false, rows, in, outF, 1f, dout, (long) r0 * outF, outF, w, (long) g * outF * in, in, 0f, dx,
                        (long) r0 * in, in);
            }
            Blas.sgemm(true, false, outF, in, rows, 1f, dout, (long) r0 * outF, outF, x, (long) r0 * in, in, 1f, dw,
                    (long) g * outF * in, in);
        }
    }

    @Override
    public void countTokens(Tensor tally, Tensor counts, int e) {
        ByteBuffer t = tally.hostBuffer();
        IntBuffer c = counts.ints();
        for (int i = 0; i < e; i++) {
            t.putDouble(8 * i, t.getDouble(8 * i) + c.get(i));
        }
    }

    @Override
    public void expertBiasUpdate(Tensor bias, Tensor tally, int e, float rate) {
        ByteBuffer t = tally.hostBuffer();
        FloatBuffer b = bias.floats();
        double sum = 0;
        for (int i = 0; i < e; i++) {
            sum += t.getDouble(8 * i);
        }
        double mean = sum / e;
        for (int i = 0; i < e; i++) {
            double offset = mean - t.getDouble(8 * i);
            b.put(i, b.get(i) + (float) Math.signum(offset) * rate);
            t.putDouble(8 * i, 0);
        }
    }

    private static void addScalar(Tensor acc, int slot, double value) {
        if (acc.dtype() != DType.F64) {
            throw new IllegalArgumentException("accumulator must be F64, got " + acc);
        }
        ByteBuffer b = acc.hostBuffer();
        b.putDouble(8 * slot, b.getDouble(8 * slot) + value);
    }
}
