package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.PrintStream;
import java.util.Locale;
import org.sparkatron.train.Evaluator;
import org.sparkatron.train.IntervalStats;

/**
 * The console side of live progress: one line per log interval in Megatron's manner (step, interval-mean
 * loss, gradient norm, learning rate, loss scale, tokens/s and samples/s, model TFLOP/s per rank, MFU,
 * memory, skipped steps, ETA), one line per evaluation (loss and perplexity) and rank 0's events. When the
 * output is a terminal, a progress bar on the current line follows every step between the interval lines.
 *
 * <p>Not thread-safe: its owner ({@link TrainingMonitor}) serialises the calls.
 */
final class ConsoleProgress {
    private static final int BAR = 30;
    private final PrintStream out;
    private final boolean terminal;
    private final int steps;
    private boolean barShown;

    /** {@code out} may be null (nothing printed); {@code terminal}: draw the progress bar. */
    ConsoleProgress(PrintStream out, boolean terminal, int steps) {
        this.out = out;
        this.terminal = terminal && out != null;
        this.steps = steps;
    }

    /** Whether {@code out} is this process's terminal (stdout is a console). */
    static boolean isTerminal(PrintStream out) {
        return out == System.out && System.console() != null && !"0".equals(System.getenv("SPARKATRON_PROGRESS_BAR"));
    }

    void line(String text) {
        if (out == null) {
            return;
        }
        clearBar();
        out.println("[sparkatron] " + text);
        out.flush();
    }

    /** A step report: redraws the bar on a terminal. */
    void step(JsonNode n, double secondsPerStep) {
        if (!terminal) {
            return;
        }
        long step = n.path("step").asLong();
        int filled = (int) Math.min(BAR, BAR * step / Math.max(1, steps));
        out.print(String.format(Locale.ROOT, "\r\033[K[%s%s] %d/%d  loss %.4f  ETA %s", "#".repeat(filled), ".".repeat(BAR - filled), step,
                steps, n.path("loss").asDouble(), eta(secondsPerStep * (steps - step))));
        out.flush();
        barShown = true;
    }

    /** The interval line ({@link IntervalStats.Interval#describe}, memory: the largest process of the job). */
    void interval(JsonNode n) {
        line(IntervalStats.Interval.fromJson(n).describe(steps, n.path("max_rss_mb").asDouble(Double.NaN)) + attempt(n));
    }

    void eval(JsonNode n) {
        line(Evaluator.Evaluation.fromJson(n).describe() + attempt(n));
    }

    private void clearBar() {
        if (barShown) {
            out.print("\r\033[K");
            barShown = false;
        }
    }

    private static String attempt(JsonNode n) {
        int a = n.path("attempt").asInt();
        return a > 0 ? " | attempt " + a : "";
    }

    private static String eta(double seconds) {
        return IntervalStats.eta(seconds);
    }
}
