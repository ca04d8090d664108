package org.sparkatron.train.track;

import java.util.List;
import java.util.Locale;

/**
 * The loss plot as a self-contained SVG: training loss (every step, thin; the interval averages, bold) and
 * validation loss (points joined by a line) against the step, with axes, ticks and a legend. Each series
 * is a {@code <polyline>} with a {@code data-series} attribute ("train-step", "train-interval", "valid")
 * and {@code data-points} (its point count), so tools and tests can read it back. Pure function,
 * thread-safe.
 */
public final class LossPlot {
    private static final int W = 720;
    private static final int H = 400;
    private static final int LEFT = 64;
    private static final int RIGHT = 20;
    private static final int TOP = 40;
    private static final int BOTTOM = 48;
    /** At most this many per-step points are drawn ({@link #ofHistory} thins longer runs evenly). */
    static final int MAX_POINTS = 2000;

    private LossPlot() {
    }

    /** A point: step and loss. */
    public record Point(double step, double loss) {
    }

    /** The SVG document for these series (any may be empty) under {@code title}. */
    public static String svg(String title, List<Point> steps, List<Point> intervals, List<Point> valid) {
        double x0 = Double.MAX_VALUE;
        double x1 = -Double.MAX_VALUE;
        double y0 = Double.MAX_VALUE;
        double y1 = -Double.MAX_VALUE;
        for (List<Point> s : List.of(steps, intervals, valid)) {
            for (Point p : s) {
                if (Double.isFinite(p.loss())) {
                    x0 = Math.min(x0, p.step());
                    x1 = Math.max(x1, p.step());
                    y0 = Math.min(y0, p.loss());
                    y1 = Math.max(y1, p.loss());
                }
            }
        }
        if (x0 > x1) { // nothing yet
            x0 = 0;
            x1 = 1;
            y0 = 0;
            y1 = 1;
        }
        if (x1 - x0 < 1) {
            x1 = x0 + 1;
        }
        double pad = Math.max(1e-3, (y1 - y0) * 0.05);
        y0 = Math.max(0, y0 - pad);
        y1 = y1 + pad;
        Axis ax = new Axis(x0, x1, y0, y1);
        StringBuilder b = new StringBuilder();
        b.append(String.format(Locale.ROOT, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                + "font-family=\"sans-serif\" font-size=\"12\">%n", W, H, W, H));
        b.append(String.format(Locale.ROOT, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>%n", W, H));
        b.append(String.format(Locale.ROOT, "<text x=\"%d\" y=\"22\" font-size=\"14\">%s</text>%n", LEFT, escape(title)));
        for (double t : ticks(y0, y1)) {
            double y = ax.y(t);
            b.append(String.format(Locale.ROOT, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>"
                    + "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>%n", LEFT, W - RIGHT, y, y, LEFT - 6, y + 4, label(t)));
        }
        for (double t : ticks(x0, x1)) {
            double x = ax.x(t);
            b.append(String.format(Locale.ROOT, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\" stroke=\"#e5e5e5\"/>"
                    + "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>%n", x, x, TOP, H - BOTTOM, x, H - BOTTOM + 16, label(t)));
        }
        b.append(String.format(Locale.ROOT, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>%n",
                LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM));
        b.append(String.format(Locale.ROOT, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>%n", (W + LEFT) / 2, H - 10));
        b.append(String.format(Locale.ROOT, "<text x=\"16\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 16 %d)\">loss (nats)</text>%n",
                (H + TOP - BOTTOM) / 2, (H + TOP - BOTTOM) / 2));
        series(b, ax, "train-step", steps, "#9ecae1", 1);
        series(b, ax, "train-interval", intervals, "#08519c", 2.5);
        series(b, ax, "valid", valid, "#d94801", 2.5);
        for (Point p : valid) {
            if (Double.isFinite(p.loss())) {
                b.append(String.format(Locale.ROOT, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d94801\"/>%n", ax.x(p.step()), ax.y(p.loss())));
            }
        }
        String[][] legend = {{"#9ecae1", "training loss (step)"}, {"#08519c", "training loss (interval mean)"}, {"#d94801", "validation loss"}};
        for (int i = 0; i < legend.length; i++) {
            int y = TOP + 16 + 16 * i;
            b.append(String.format(Locale.ROOT, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>"
                    + "<text x=\"%d\" y=\"%d\">%s</text>%n", W - RIGHT - 210, W - RIGHT - 190, y, y, legend[i][0], W - RIGHT - 184, y + 4, legend[i][1]));
        }
        b.append("</svg>\n");
        return b.toString();
    }

    /**
     * The plot of a run's history: every step (at most {@link #MAX_POINTS}, thinned evenly beyond), the means over
     * log intervals (windows of {@code logInterval} steps; 0: about 20 windows) and the validation losses.
     */
    public static String ofHistory(String title, java.util.NavigableMap<Long, Double> losses, java.util.NavigableMap<Long, Double> valid,
                                   int logInterval) {
        List<Point> steps = new java.util.ArrayList<>();
        List<Point> means = new java.util.ArrayList<>();
        long stride = Math.max(1, (losses.size() + MAX_POINTS - 1) / MAX_POINTS); // a long run: every stride-th step
        long i = 0;
        for (java.util.Map.Entry<Long, Double> e : losses.entrySet()) {
            if (i++ % stride == 0 || e.getKey().equals(losses.lastKey())) {
                steps.add(new Point(e.getKey(), e.getValue()));
            }
        }
        int window = logInterval > 0 ? logInterval : Math.max(1, losses.size() / 20);
        long at = -1;
        double sum = 0;
        int n = 0;
        for (java.util.Map.Entry<Long, Double> e : losses.entrySet()) {
            long w = (e.getKey() - 1) / window;
            if (w != at && n > 0) {
                means.add(new Point(Math.min((at + 1) * window, losses.lastKey()), sum / n));
                sum = 0;
                n = 0;
            }
            at = w;
            sum += e.getValue();
            n++;
        }
        if (n > 0) {
            means.add(new Point(Math.min((at + 1) * window, losses.lastKey()), sum / n));
        }
        List<Point> v = new java.util.ArrayList<>();
        valid.forEach((s, l) -> v.add(new Point(s, l)));
        return svg(title, steps, means, v);
    }

    private record Axis(double x0, double x1, double y0, double y1) {
        double x(double v) {
            return LEFT + (v - x0) / (x1 - x0) * (W - LEFT - RIGHT);
        }

        double y(double v) {
            return H - BOTTOM - (v - y0) / (y1 - y0) * (H - TOP - BOTTOM);
        }
    }

    private static void series(StringBuilder b, Axis ax, String name, List<Point> pts, String color, double width) {
        StringBuilder p = new StringBuilder();
        int n = 0;
        for (Point pt : pts) {
            if (Double.isFinite(pt.loss())) {
                p.append(String.format(Locale.ROOT, "%.1f,%.1f ", ax.x(pt.step()), ax.y(pt.loss())));
                n++;
            }
        }
        b.append(String.format(Locale.ROOT, "<polyline data-series=\"%s\" data-points=\"%d\" fill=\"none\" stroke=\"%s\" "
                + "stroke-width=\"%s\" points=\"%s\"/>%n", name, n, color, width, p.toString().strip()));
    }

    /** About five round tick values covering [lo, hi]. */
    static double[] ticks(double lo, double hi) {
        double span = hi - lo;
        double raw = span / 5;
        double mag = Math.pow(10, Math.floor(Math.log10(raw)));
        double f = raw / mag; // in [1, 10)
        double step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
        double first = Math.ceil(lo / step) * step;
        int n = (int) Math.floor((hi - first) / step + 1e-9) + 1;
        double[] out = new double[Math.max(0, n)];
        for (int i = 0; i < out.length; i++) {
            out[i] = first + i * step;
        }
        return out;
    }

    private static String label(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e9) {
            return String.format(Locale.ROOT, "%d", (long) v);
        }
        return String.format(Locale.ROOT, "%.3g", v);
    }

    static String escape(String s) {
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\"", "&quot;");
    }
}
