package org.sparkatron.device.cpu;

/**
 * Plain double-precision reference implementations of every kernel, written for clarity, not speed.
 * Shapes follow {@link org.sparkatron.device.Kernels}.
 */
final class Reference {
    private Reference() {
    }

    static double[] linear(double[] x, double[] w, double[] b, int n, int in, int out) {
        double[] y = new double[n * out];
        for (int r = 0; r < n; r++) {
            for (int o = 0; o < out; o++) {
                double s = b == null ? 0 : b[o];
                for (int i = 0; i < in; i++) {
                    s += x[r * in + i] * w[o * in + i];
                }
                y[r * out + o] = s;
            }
        }
        return y;
    }

    static double[] layerNorm(double[] x, double[] w, double[] b, int n, int c, double eps) {
        double[] y = new double[n * c];
        for (int r = 0; r < n; r++) {
            double m = 0;
            for (int j = 0; j < c; j++) {
                m += x[r * c + j];
            }
            m /= c;
            double v = 0;
            for (int j = 0; j < c; j++) {
                v += (x[r * c + j] - m) * (x[r * c + j] - m);
            }
            double s = 1 / Math.sqrt(v / c + eps);
            for (int j = 0; j < c; j++) {
                y[r * c + j] = (x[r * c + j] - m) * s * w[j] + b[j];
            }
        }
        return y;
    }

    static double[] rmsNorm(double[] x, double[] w, int n, int c, double eps) {
        double[] y = new double[n * c];
        for (int r = 0; r < n; r++) {
            double ss = 0;
            for (int j = 0; j < c; j++) {
                ss += x[r * c + j] * x[r * c + j];
            }
            double s = 1 / Math.sqrt(ss / c + eps);
            for (int j = 0; j < c; j++) {
                y[r * c + j] = x[r * c + j] * s * w[j];
            }
        }
        return y;
    }

    static double[] gelu(double[] x) {
        double[] y = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double v = x[i];
            y[i] = 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
        }
        return y;
    }

    static double[] swiglu(double[] gu, int n, int f) {
        double[] y = new double[n * f];
        for (int r = 0; r < n; r++) {
            for (int j = 0; j < f; j++) {
                double g = gu[r * 2 * f + j];
                y[r * f + j] = g / (1 + Math.exp(-g)) * gu[r * 2 * f + f + j];
            }
        }
        return y;
    }

    static double[] embedding(int[] tok, double[] wte, double[] wpe, int n, int t, int c) {
        double[] y = new double[n * c];
        for (int r = 0; r < n; r++) {
            for (int j = 0; j < c; j++) {
                y[r * c + j] = wte[tok[r] * c + j] + (wpe == null ? 0 : wpe[(r % t) * c + j]);
            }
        }
        return y;
    }

    /** Hugging Face rotate-half RoPE on the q and k heads, angles computed here in double. */
    static double[] rope(double[] qkv, int b, int t, int heads, int kvHeads, int hd, double theta) {
        return rope(qkv, b, t, heads, kvHeads, hd, theta, null);
    }

    /** RoPE with the position of row r {@code positions[r % t]} (r % t when null). */
    static double[] rope(double[] qkv, int b, int t, int heads, int kvHeads, int hd, double theta, int[] positions) {
        double[] y = qkv.clone();
        int width = (heads + 2 * kvHeads) * hd;
        int half = hd / 2;
        for (int r = 0; r < b * t; r++) {
            int pos = positions == null ? r % t : positions[r % t];
            for (int h = 0; h < heads + kvHeads; h++) {
                int base = r * width + h * hd;
                for (int j = 0; j < half; j++) {
                    double ang = pos * Math.pow(theta, -2.0 * j / hd);
                    double x1 = qkv[base + j];
                    double x2 = qkv[base + half + j];
                    y[base + j] = x1 * Math.cos(ang) - x2 * Math.sin(ang);
                    y[base + half + j] = x2 * Math.cos(ang) + x1 * Math.sin(ang);
                }
            }
        }
        return y;
    }

    /** Causal attention with grouped-query heads, full score matrix, textbook softmax. */
    static double[] attention(double[] qkv, int b, int t, int heads, int kvHeads, int hd) {
        int width = (heads + 2 * kvHeads) * hd;
        int c = heads * hd;
        int group = heads / kvHeads;
        double[] out = new double[b * t * c];
        for (int bi = 0; bi < b; bi++) {
            for (int h = 0; h < heads; h++) {
                int g = h / group;
                for (int i = 0; i < t; i++) {
                    double[] s = new double[i + 1];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j <= i; j++) {
                        double dot = 0;
                        for (int d = 0; d < hd; d++) {
                            dot += qkv[(bi * t + i) * width + h * hd + d] * qkv[(bi * t + j) * width + (heads + g) * hd + d];
                        }
                        s[j] = dot / Math.sqrt(hd);
                        max = Math.max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) {
                        s[j] = Math.exp(s[j] - max);
                        sum += s[j];
                    }
                    for (int d = 0; d < hd; d++) {
                        double acc = 0;
                        for (int j = 0; j <= i; j++) {
                            acc += s[j] / sum * qkv[(bi * t + j) * width + (heads + kvHeads + g) * hd + d];
                        }
                        out[(bi * t + i) * c + h * hd + d] = acc;
                    }
                }
            }
        }
        return out;
    }

    /** Per-row cross-entropy over the first v of vPadded columns. */
    static double[] crossEntropy(double[] logits, int[] targets, int rows, int v, int vPadded) {
        double[] loss = new double[rows];
        for (int r = 0; r < rows; r++) {
            double max = Double.NEGATIVE_INFINITY;
            for (int j = 0; j < v; j++) {
                max = Math.max(max, logits[r * vPadded + j]);
            }
            double sum = 0;
            for (int j = 0; j < v; j++) {
                sum += Math.exp(logits[r * vPadded + j] - max);
            }
            loss[r] = max + Math.log(sum) - logits[r * vPadded + targets[r]];
        }
        return loss;
    }

    interface Fn {
        double[] apply(double[] x);
    }

    /** Central finite differences of L(x) = sum(dout * f(x)) with respect to every element of x. */
    static double[] gradient(Fn f, double[] x, double[] dout) {
        double[] g = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double h = 1e-6 * Math.max(1, Math.abs(x[i]));
            double keep = x[i];
            x[i] = keep + h;
            double plus = dot(dout, f.apply(x));
            x[i] = keep - h;
            double minus = dot(dout, f.apply(x));
            x[i] = keep;
            g[i] = (plus - minus) / (2 * h);
        }
        return g;
    }

    static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }
}
