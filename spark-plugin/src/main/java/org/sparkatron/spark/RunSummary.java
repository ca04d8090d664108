package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * The closing summary of a run, comparing like with like: the training loss averaged over the first and
 * the last log interval of the whole history (earlier jobs of a resumed run included), not two single
 * batches; the first and last validation losses; and the last interval's throughput. Pure function of the
 * trajectory lines ({@code metrics.jsonl}) and the last interval report.
 */
final class RunSummary {
    private RunSummary() {
    }

    /** Console lines (without the "[sparkatron] " prefix). */
    static List<String> lines(List<String> trajectory, int logInterval, long firstStepThisJob, JsonNode lastInterval) {
        List<long[]> stepsSeen = new ArrayList<>();
        List<double[]> losses = new ArrayList<>();
        List<double[]> valid = new ArrayList<>();
        for (String l : trajectory) {
            JsonNode n = DistributedTraining.metric(l);
            if (n.path("kind").asText("").equals("eval")) {
                valid.add(new double[] {n.path("step").asLong(), n.path("valid_loss").asDouble()});
            } else if (n.has("loss") && !n.path("skipped").asBoolean(false)) {
                losses.add(new double[] {n.path("step").asLong(), n.path("loss").asDouble()});
            }
        }
        List<String> out = new ArrayList<>();
        if (losses.isEmpty()) {
            out.add("done: no steps were trained" + (firstStepThisJob > 1 ? " (the checkpoint is at the last step already)" : ""));
            return out;
        }
        long first = (long) losses.get(0)[0];
        long last = (long) losses.get(losses.size() - 1)[0];
        out.add(String.format(Locale.ROOT, "done: steps %d-%d%s", first, last,
                firstStepThisJob > first ? " (this job trained " + firstStepThisJob + "-" + last + ", resumed from the checkpoint of step "
                        + (firstStepThisJob - 1) + ")" : ""));
        int w = Math.max(1, logInterval);
        double[] head = mean(losses, first, first + w - 1);
        long lastWindowStart = Math.max(first, ((last - 1) / w) * w + 1);
        double[] tail = mean(losses, lastWindowStart, last);
        out.add(String.format(Locale.ROOT, "training loss (mean of a log interval): %.4f at steps %d-%d -> %.4f at steps %d-%d (%s)",
                head[0], first, (long) head[1], tail[0], lastWindowStart, last, change(head[0], tail[0])));
        if (!valid.isEmpty()) {
            double[] v0 = valid.get(0);
            double[] v1 = valid.get(valid.size() - 1);
            out.add(String.format(Locale.ROOT, "validation loss: %.4f (ppl %.2f) at step %d -> %.4f (ppl %.2f) at step %d (%s)",
                    v0[1], Math.exp(v0[1]), (long) v0[0], v1[1], Math.exp(v1[1]), (long) v1[0], change(v0[1], v1[1])));
        }
        if (lastInterval != null) {
            out.add(String.format(Locale.ROOT, "throughput (last interval): %,.0f tokens/s, %.2f samples/s, %.3g TFLOP/s per rank, MFU %.2f%%",
                    lastInterval.path("tokens_per_s").asDouble(), lastInterval.path("samples_per_s").asDouble(),
                    lastInterval.path("tflops_per_rank").asDouble(), 100 * lastInterval.path("mfu").asDouble()));
        }
        return out;
    }

    /** Mean loss over steps [from, to] and the last step included. */
    private static double[] mean(List<double[]> losses, long from, long to) {
        double sum = 0;
        int n = 0;
        long lastIn = from;
        for (double[] l : losses) {
            if (l[0] >= from && l[0] <= to) {
                sum += l[1];
                n++;
                lastIn = (long) l[0];
            }
        }
        return new double[] {n == 0 ? Double.NaN : sum / n, lastIn};
    }

    private static String change(double a, double b) {
        return b < a ? String.format(Locale.ROOT, "down %.4f", a - b) : String.format(Locale.ROOT, "up %.4f", b - a);
    }
}
