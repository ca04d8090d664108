package org.sparkatron.spark;

import com.codahale.metrics.Gauge;
import com.codahale.metrics.MetricRegistry;
import com.fasterxml.jackson.databind.JsonNode;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.ToDoubleFunction;
import org.apache.spark.SparkContext;
import org.apache.spark.api.plugin.DriverPlugin;
import org.apache.spark.api.plugin.PluginContext;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The driver side of {@link SparkatronPlugin}: receives rank 0's progress lines over Spark RPC and hands them
 * to the job's {@link TrainingMonitor} (jobs register under a key derived from their secret, so another
 * application's or a stale attempt's messages are ignored); registers gauges of the current (or last) job in
 * the plugin's Dropwizard registry, which Spark's metrics system publishes as the source
 * {@code plugin.org.sparkatron.spark.SparkatronPlugin} (gauges {@code step}, {@code loss}, {@code valid_loss},
 * {@code tokens_per_s}, {@code samples_per_s}, {@code tflops_per_rank}, {@code mfu}, {@code lr}, {@code grad_norm},
 * {@code max_rss_mb}); and attaches the "Sparkatron" tab to the Spark UI when the UI is on.
 *
 * <p>Threads: {@link #receive} runs on Spark's plugin RPC endpoint (one message at a time, in order);
 * registration on the job's driver thread; gauges on the metrics system's threads. All state is in
 * thread-safe holders. One instance per SparkContext; {@link #forContext} finds it.
 */
public final class SparkatronDriverPlugin implements DriverPlugin {
    private static final Logger LOG = LoggerFactory.getLogger(SparkatronDriverPlugin.class);
    private static volatile SparkatronDriverPlugin active;

    private final Map<String, TrainingMonitor> jobs = new ConcurrentHashMap<>();
    private final Map<String, FailFast> failFasts = new ConcurrentHashMap<>();
    private volatile TrainingMonitor current;
    private volatile SparkContext sc;

    /** The plugin of {@code sc}, or null where {@code spark.plugins} does not install it. */
    static SparkatronDriverPlugin forContext(SparkContext sc) {
        SparkatronDriverPlugin p = active;
        return p != null && p.sc == sc && !sc.isStopped() ? p : null;
    }

    @Override
    public Map<String, String> init(SparkContext sc, PluginContext ctx) {
        this.sc = sc;
        active = this;
        if (sc.ui().isDefined()) {
            SparkatronUiTab.attach(sc.ui().get(), this);
        }
        LOG.info("sparkatron: plugin installed: progress over Spark RPC, metrics in Spark's metrics system{}",
                sc.ui().isDefined() ? ", Sparkatron tab in the Spark UI" : "");
        return Map.of();
    }

    @Override
    public void registerMetrics(String appId, PluginContext ctx) {
        MetricRegistry r = ctx.metricRegistry();
        r.register("step", (Gauge<Long>) () -> {
            TrainingMonitor m = current;
            return m == null ? 0L : m.step();
        });
        gauge(r, "loss", i -> i.path("loss").asDouble(Double.NaN), false);
        gauge(r, "tokens_per_s", i -> i.path("tokens_per_s").asDouble(), false);
        gauge(r, "samples_per_s", i -> i.path("samples_per_s").asDouble(), false);
        gauge(r, "tflops_per_rank", i -> i.path("tflops_per_rank").asDouble(), false);
        gauge(r, "mfu", i -> i.path("mfu").asDouble(), false);
        gauge(r, "lr", i -> i.path("lr").asDouble(), false);
        gauge(r, "grad_norm", i -> i.path("grad_norm").asDouble(), false);
        gauge(r, "max_rss_mb", i -> i.path("max_rss_mb").asDouble(), false);
        gauge(r, "valid_loss", e -> e.path("valid_loss").asDouble(Double.NaN), true);
    }

    /** A gauge of the current job's last interval (or evaluation) report; NaN before the first one. */
    private void gauge(MetricRegistry r, String name, ToDoubleFunction<JsonNode> value, boolean eval) {
        r.register(name, (Gauge<Double>) () -> {
            TrainingMonitor m = current;
            if (m == null) {
                return Double.NaN;
            }
            JsonNode n = eval ? m.lastEval() : m.lastInterval();
            return n == null ? Double.NaN : value.applyAsDouble(n);
        });
    }

    /** Routes the messages of job {@code key} to {@code monitor} until {@link #unregister}; it becomes the current job. */
    void register(String key, TrainingMonitor monitor) {
        jobs.put(key, monitor);
        current = monitor;
    }

    /** Routes the failure notices of job {@code key} to {@code failFast} until {@link #unregister}. */
    void register(String key, FailFast failFast) {
        failFasts.put(key, failFast);
    }

    /** Stops routing; the job stays the one the gauges and the UI show until another starts. */
    void unregister(String key) {
        jobs.remove(key);
        failFasts.remove(key);
    }

    /** The job the UI and gauges show: the running one, else the last. */
    TrainingMonitor current() {
        return current;
    }

    @Override
    public Object receive(Object message) {
        if (message instanceof SparkatronPlugin.Progress p) {
            TrainingMonitor m = jobs.get(p.job());
            if (m != null) {
                try {
                    m.accept(TrainConfig.JSON.readTree(p.line()));
                } catch (java.io.IOException | RuntimeException e) {
                    LOG.debug("sparkatron: dropped a progress line: {}", e.toString());
                }
            }
            return null;
        }
        if (message instanceof SparkatronPlugin.Failure f) {
            FailFast ff = failFasts.get(f.job());
            if (ff != null) {
                ff.noticed(f.badInput(), f.message());
            }
            return ff != null;
        }
        if (message instanceof SparkatronPlugin.Flush) {
            return Boolean.TRUE; // every earlier message of the sender was handled (one endpoint thread, in order)
        }
        return null;
    }

    @Override
    public void shutdown() {
        if (active == this) {
            active = null;
        }
        jobs.clear();
    }
}
