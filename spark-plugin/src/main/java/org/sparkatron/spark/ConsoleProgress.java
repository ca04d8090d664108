package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.PrintStream;
import java.util.Locale;

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
        out.print(String.format(Locale.ROOT, "\r\033[K[%s%s] %d/%d  loss %.4f  %s", "#".repeat(filled), ".".repeat(BAR - filled), step,
                steps, n.path("loss").asDouble(), eta(secondsPerStep * (steps - step))));
        out.flush();
        barShown = true;
    }

    /** The interval line; {@code secondsPerStep} (training time only) gives the ETA. */
    void interval(JsonNode n) {
        long step = n.path("step").asLong();
        double perStep = n.path("seconds").asDouble() / Math.max(1, n.path("steps").asInt());
        JsonNode loss = n.path("loss");
        double rssMb = n.has("max_rss_mb") ? n.path("max_rss_mb").asDouble() : n.path("rss_bytes").asDouble() / 1048576;
        line(String.format(Locale.ROOT, "step %" + digits() + "d/%d | loss %s | grad norm %.3f | lr %.3e | %s%s tok/s | %.2f samples/s | "
                        + "%.3g TFLOP/s/rank | MFU %.2f%% | mem %.2f GB | skipped %d | ETA %s%s",
                step, steps, loss.isNumber() ? String.format(Locale.ROOT, "%.4f", loss.asDouble()) : "-", n.path("grad_norm").asDouble(),
                n.path("lr").asDouble(), n.path("loss_scale").asDouble(1) != 1 ? String.format(Locale.ROOT, "loss scale %.0f | ",
                        n.path("loss_scale").asDouble()) : "", grouped(n.path("tokens_per_s").asDouble()), n.path("samples_per_s").asDouble(),
                n.path("tflops_per_rank").asDouble(), 100 * n.path("mfu").asDouble(), rssMb / 1024, n.path("skipped").asInt(),
                eta(perStep * (steps - step)), attempt(n)));
    }

    void eval(JsonNode n) {
        line(String.format(Locale.ROOT, "validation at step %d | loss %.4f | ppl %.3f | %d samples in %.1f s%s", n.path("step").asLong(),
                n.path("valid_loss").asDouble(), n.path("valid_ppl").asDouble(), n.path("eval_samples").asLong(), n.path("eval_s").asDouble(),
                attempt(n)));
    }

    private String digits() {
        return String.valueOf(String.valueOf(steps).length());
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

    static String eta(double seconds) {
        long s = Math.round(Math.max(0, seconds));
        return s >= 3600 ? String.format(Locale.ROOT, "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                : String.format(Locale.ROOT, "%d:%02d", s / 60, s % 60);
    }

    private static String grouped(double v) {
        return String.format(Locale.ROOT, "%,.0f", v);
    }
}
