package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import jakarta.servlet.http.HttpServletRequest;
import java.util.List;
import java.util.Locale;
import org.apache.spark.ui.SparkUI;
import org.apache.spark.ui.SparkUITab;
import org.apache.spark.ui.UIUtils;
import org.apache.spark.ui.WebUIPage;
import scala.Option;
import scala.jdk.javaapi.CollectionConverters;
import scala.xml.Node;
import scala.xml.Unparsed;

/**
 * The live "Sparkatron" tab of the Spark UI ({@code /sparkatron/}): the current (or last) job's loss curve
 * (every step, interval means, validation; the same SVG as {@code loss.svg}), progress, the last interval's
 * figures (loss, gradient norm, LR, tokens/s, samples/s, TFLOP/s per rank, MFU, memory), the last evaluation
 * and the layout. The page reloads itself every 3 s while the job runs. Rendered on Jetty's threads from a
 * {@link TrainingMonitor#snapshot} (a consistent copy).
 */
final class SparkatronUiTab extends SparkUITab {
    private final SparkatronDriverPlugin plugin;

    private SparkatronUiTab(SparkUI ui, SparkatronDriverPlugin plugin) {
        super(ui, "sparkatron");
        this.plugin = plugin;
        attachPage(new Page(this));
    }

    static void attach(SparkUI ui, SparkatronDriverPlugin plugin) {
        ui.attachTab(new SparkatronUiTab(ui, plugin));
    }

    private static final class Page extends WebUIPage {
        private final SparkatronUiTab tab;

        Page(SparkatronUiTab tab) {
            super("");
            this.tab = tab;
        }

        @Override
        public scala.collection.immutable.Seq<Node> render(HttpServletRequest request) {
            String html = html(tab.plugin.current());
            scala.collection.immutable.Seq<Node> content = CollectionConverters.asScala(List.<Node>of(new Unparsed(html))).toList();
            return UIUtils.headerSparkPage(request, "Sparkatron", () -> content, tab, Option.empty(), false, false);
        }
    }

    /** The page body for a job's monitor (null: no training yet). */
    static String html(TrainingMonitor monitor) {
        if (monitor == null) {
            return "<p id=\"sparkatron-none\">No Sparkatron training has run in this application yet.</p>";
        }
        TrainingMonitor.Snapshot s = monitor.snapshot();
        StringBuilder b = new StringBuilder("<div id=\"sparkatron\">");
        boolean running = s.step() < s.steps();
        b.append(String.format(Locale.ROOT, "<h4 id=\"sparkatron-progress\" data-step=\"%d\" data-steps=\"%d\">%s: step %d of %d (%.0f%%)%s</h4>",
                s.step(), s.steps(), esc(s.title()), s.step(), s.steps(), 100.0 * s.step() / Math.max(1, s.steps()), running ? ", running" : ""));
        b.append("<div>").append(s.svg()).append("</div>");
        b.append("<table class=\"table table-bordered table-sm\" style=\"width:auto\" id=\"sparkatron-figures\"><tbody>");
        JsonNode i = s.lastInterval();
        if (i != null) {
            row(b, "last interval", "steps " + i.path("first_step").asLong() + "-" + i.path("step").asLong());
            row(b, "training loss (interval mean)", i.path("loss").isNumber() ? fmt("%.4f", i.path("loss").asDouble()) : "-");
            row(b, "gradient norm / learning rate", fmt("%.3f / %.3e", i.path("grad_norm").asDouble(), i.path("lr").asDouble()));
            row(b, "throughput", fmt("%,.0f tokens/s, %.2f samples/s", i.path("tokens_per_s").asDouble(), i.path("samples_per_s").asDouble()));
            row(b, "model TFLOP/s per rank / MFU", fmt("%.3g / %.2f%%", i.path("tflops_per_rank").asDouble(), 100 * i.path("mfu").asDouble()));
            row(b, "memory (largest process)", fmt("%.2f GB", i.path("max_rss_mb").asDouble() / 1024));
            row(b, "skipped steps (interval)", String.valueOf(i.path("skipped").asInt()));
        }
        JsonNode e = s.lastEval();
        if (e != null) {
            row(b, "validation", fmt("loss %.4f, ppl %.3f at step %d", e.path("valid_loss").asDouble(), e.path("valid_ppl").asDouble(),
                    e.path("step").asLong()));
        }
        JsonNode st = s.start();
        if (st != null) {
            row(b, "layout", fmt("%d rank(s): dp %d x tp %d%s", st.path("world").asInt(), st.path("dp").asInt(), st.path("tp").asInt(),
                    st.path("sequence_parallel").asBoolean() ? " + sequence parallel" : ""));
            row(b, "rank 0 device", esc(st.path("device").asText()));
            row(b, "model", fmt("%,d parameters, %.3g GFLOP per step, peak %.1f GFLOP/s per rank (measured sgemm)", st.path("parameters").asLong(),
                    st.path("flops_per_step").asDouble() / 1e9, st.path("min_peak_gflops_per_rank").asDouble()));
            row(b, "this attempt", fmt("attempt %d, from step %d", st.path("attempt").asInt(), st.path("first_step").asLong()));
        }
        b.append("</tbody></table>");
        if (running) {
            b.append("<script>setTimeout(function () { location.reload(); }, 3000);</script>");
        }
        return b.append("</div>").toString();
    }

    private static void row(StringBuilder b, String k, String v) {
        b.append("<tr><th>").append(esc(k)).append("</th><td>").append(v).append("</td></tr>");
    }

    private static String fmt(String f, Object... a) {
        return String.format(Locale.ROOT, f, a);
    }

    private static String esc(String s) {
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\"", "&quot;");
    }
}
