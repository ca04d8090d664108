package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.FilterOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NavigableMap;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.sparkatron.train.track.LossPlot;
import org.sparkatron.train.track.MlflowTracking;
import org.sparkatron.train.track.TensorBoardEvents;

/**
 * The driver's view of one training job: every report of rank 0 (from the {@link ProgressServer} socket or
 * the plugin's RPC) goes through {@link #accept} to the console ({@link ConsoleProgress}), the run's history
 * ({@link MetricsLog}), the loss plot ({@code loss.svg}, rewritten at every interval and evaluation),
 * TensorBoard ({@code tensorboard_dir}), MLflow ({@code mlflow_tracking_uri}) and the live state the Spark UI
 * page and Spark metrics read ({@link #snapshot}). The history and the plot live in {@code liveDir}: the
 * output itself for a job that may resume from a checkpoint (its history continues there, across jobs), else
 * the job's staging directory ({@link OutputCommit}), so a fresh job never replaces the previous run's
 * history beside the previous run's model until it has a model of its own to commit.
 *
 * <p>Threads: {@link #accept} is called by the progress threads, the rest by the driver thread; all are
 * synchronized. Construction is where bad tracking settings fail (an unreachable MLflow server, an unwritable
 * TensorBoard directory: IllegalArgumentException before anything is launched); afterwards every sink is best
 * effort -- a failure is logged once, that sink stops, training goes on.
 */
final class TrainingMonitor implements java.util.function.Consumer<JsonNode>, AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(TrainingMonitor.class);
    static final String PLOT = "loss.svg";

    private final TrainConfig cfg;
    private final Configuration hadoopConf;
    private final ConsoleProgress console;
    private final MetricsLog history;
    /** Where metrics.jsonl and loss.svg are written while the job runs (null: nowhere). */
    private final String liveDir;
    private final String title;
    private TensorBoardEvents tensorboard;
    private MlflowTracking mlflow;
    private final List<JsonNode> intervals = new ArrayList<>();
    private final java.util.Set<String> seen = new java.util.HashSet<>();
    private JsonNode start;
    private JsonNode lastInterval;
    private JsonNode lastEval;
    private long lastStep;
    private long reports;
    private boolean plotFailed;

    /**
     * @param staging the job's staging directory under the output ({@link OutputCommit}), or null without an
     *                output: a job that cannot resume writes its history and plot there
     */
    TrainingMonitor(TrainConfig cfg, Configuration hadoopConf, PrintStream out, String dataSummary, String runName, String staging)
            throws IOException {
        this.cfg = cfg;
        this.hadoopConf = hadoopConf;
        this.console = new ConsoleProgress(out, ConsoleProgress.isTerminal(out), cfg.steps);
        boolean mayResume = mayResume(cfg);
        this.liveDir = cfg.output == null ? null : mayResume ? cfg.output : staging;
        this.history = new MetricsLog(liveDir, hadoopConf, mayResume);
        this.title = "sparkatron: " + (runName == null ? "training" : runName) + " (dp " + cfg.dp + ", tp " + cfg.tp + ", "
                + cfg.steps + " steps)";
        try {
            if (cfg.tensorboardDir != null) {
                Path dir = new Path(cfg.tensorboardDir);
                FileSystem f = dir.getFileSystem(hadoopConf);
                FileSystem fs = f instanceof org.apache.hadoop.fs.ChecksumFileSystem c ? c.getRawFileSystem() : f;
                fs.mkdirs(dir);
                String host = java.net.InetAddress.getLocalHost().getHostName();
                FSDataOutputStream raw = fs.create(new Path(dir, TensorBoardEvents.fileName(System.currentTimeMillis(), host)), false);
                this.tensorboard = new TensorBoardEvents(new FilterOutputStream(raw) {
                    @Override
                    public void write(byte[] b, int off, int len) throws IOException {
                        raw.write(b, off, len);
                    }

                    @Override
                    public void flush() throws IOException {
                        raw.hflush(); // visible to a running TensorBoard, also on HDFS
                    }
                }, now());
            }
        } catch (IOException e) {
            history.close();
            throw new IllegalArgumentException("tensorboard_dir '" + cfg.tensorboardDir + "' cannot be written: " + e.getMessage(), e);
        }
        if (cfg.mlflowTrackingUri != null) {
            try {
                mlflow = new MlflowTracking(cfg.mlflowTrackingUri, cfg.mlflowExperiment, cfg.mlflowRunName != null ? cfg.mlflowRunName
                        : runName != null ? runName : "sparkatron", Map.of("sparkatron.layout", "dp=" + cfg.dp + " tp=" + cfg.tp,
                        "mlflow.source.name", "sparkatron"));
                Map<String, String> params = new LinkedHashMap<>();
                cfg.resolved().fields().forEachRemaining(e -> params.put(e.getKey(), e.getValue().isTextual() ? e.getValue().asText()
                        : e.getValue().toString()));
                params.put("data", dataSummary == null ? "" : dataSummary);
                mlflow.logParams(params);
            } catch (IOException e) {
                closeSinks(false);
                history.close();
                throw new IllegalArgumentException("mlflow_tracking_uri: " + e.getMessage(), e);
            }
        }
    }

    @Override
    public synchronized void accept(JsonNode n) {
        reports++;
        if (n.has("message")) { // an event of rank 0 (resumed, checkpoint saved)
            int a = n.path("attempt").asInt();
            String line = "rank 0" + (a > 0 ? " (attempt " + a + ")" : "") + ": " + n.path("message").asText();
            LOG.info("sparkatron: {}", line);
            console.line(line);
            return;
        }
        if (!seen.add(n.path("attempt").asInt() + "/" + n.path("kind").asText("step") + "/" + n.path("step").asLong(n.path("first_step").asLong()))) {
            return; // already handled (a late live copy of a line replayed by catchUp)
        }
        history.accept(n);
        switch (n.path("kind").asText("")) {
            case "start" -> {
                start = n;
                lastStep = n.path("first_step").asLong() - 1;
                console.line(String.format(java.util.Locale.ROOT, "rank 0%s starts at step %d of %d: %,d parameters, %.3g GFLOP per step "
                                + "(6N + 6LTC per token), peak %.1f GFLOP/s per rank (measured sgemm)", n.path("attempt").asInt() > 0
                                ? " (attempt " + n.path("attempt").asInt() + ")" : "", n.path("first_step").asLong(), n.path("steps").asLong(),
                        n.path("parameters").asLong(), n.path("flops_per_step").asDouble() / 1e9, n.path("min_peak_gflops_per_rank").asDouble()));
            }
            case "interval" -> {
                lastInterval = n;
                intervals.add(n);
                console.interval(n);
                LOG.info("sparkatron: interval {}", n);
                long step = n.path("step").asLong();
                scalar("train/loss_interval", step, n.path("loss"));
                for (String k : List.of("tokens_per_s", "samples_per_s", "tflops_per_rank", "mfu")) {
                    scalar("throughput/" + k, step, n.path(k));
                }
                scalar("memory/max_rss_mb", step, n.path("max_rss_mb"));
                scalar("train/skipped_steps", step, n.path("skipped"));
                track(step, Map.of("train/loss_interval", n.path("loss").asDouble(Double.NaN), "train/grad_norm", n.path("grad_norm").asDouble(),
                        "train/lr", n.path("lr").asDouble(), "throughput/tokens_per_s", n.path("tokens_per_s").asDouble(),
                        "throughput/samples_per_s", n.path("samples_per_s").asDouble(), "throughput/tflops_per_rank",
                        n.path("tflops_per_rank").asDouble(), "throughput/mfu", n.path("mfu").asDouble(), "memory/max_rss_mb",
                        n.path("max_rss_mb").asDouble(), "train/skipped_steps", n.path("skipped").asDouble(), "train/loss_scale",
                        n.path("loss_scale").asDouble(1)));
                plot();
            }
            case "eval" -> {
                lastEval = n;
                console.eval(n);
                LOG.info("sparkatron: evaluation {}", n);
                long step = n.path("step").asLong();
                scalar("valid/loss", step, n.path("valid_loss"));
                scalar("valid/ppl", step, n.path("valid_ppl"));
                track(step, Map.of("valid/loss", n.path("valid_loss").asDouble(), "valid/ppl", n.path("valid_ppl").asDouble()));
                plot();
            }
            case "" -> {
                if (n.has("step")) {
                    long step = n.path("step").asLong();
                    lastStep = step;
                    double perStep = lastInterval != null ? lastInterval.path("seconds").asDouble() / Math.max(1, lastInterval.path("steps").asInt())
                            : n.path("step_s").asDouble();
                    console.step(n, perStep);
                    scalar("train/loss", step, n.path("loss"));
                    scalar("train/lr", step, n.path("lr"));
                    scalar("train/grad_norm", step, n.path("grad_norm"));
                }
            }
            default -> LOG.debug("sparkatron: unknown report {}", n);
        }
    }

    /**
     * Handles the lines of the final attempt (from rank 0's result) that have not arrived live yet: the socket
     * channel cannot flush, so the last interval or evaluation may still be in flight when the results are in.
     */
    synchronized void catchUp(List<String> finalLines) {
        for (String l : finalLines) {
            accept(DistributedTraining.metric(l));
        }
    }

    /** Reports received so far. */
    synchronized long reports() {
        return reports;
    }

    /** A console line from the driver (same formatting as the progress lines). */
    synchronized void say(String line) {
        console.line(line);
    }

    /** The last step reported (0 before the first). */
    synchronized long step() {
        return lastStep;
    }

    /** The last interval report, or null. */
    synchronized JsonNode lastInterval() {
        return lastInterval;
    }

    /** The last evaluation report, or null. */
    synchronized JsonNode lastEval() {
        return lastEval;
    }

    /** What the live page shows: a copy of the current figures. */
    synchronized Snapshot snapshot() {
        return new Snapshot(title, cfg.steps, lastStep, history.losses(), history.validLosses(), lastInterval, lastEval, start);
    }

    /** The live figures of a job (immutable copies). */
    record Snapshot(String title, int steps, long step, NavigableMap<Long, Double> losses, NavigableMap<Long, Double> validLosses,
                    JsonNode lastInterval, JsonNode lastEval, JsonNode start) {
        String svg() {
            return LossPlot.ofHistory(title, losses, validLosses, 0);
        }
    }

    /** Whether a job continues an earlier run's history: it may resume from a checkpoint. */
    static boolean mayResume(TrainConfig cfg) {
        return cfg.checkpointDir != null && !cfg.startOver;
    }

    /**
     * The job ended: writes the history ({@link MetricsLog#finish}) and the final plot into the live directory;
     * returns the whole trajectory (earlier jobs' lines included). Before the output's commit.
     */
    synchronized List<String> finish(List<String> finalLines) throws IOException {
        List<String> trajectory = history.finish(finalLines);
        plot();
        return trajectory;
    }

    /** Uploads to MLflow the committed results under {@code output}. After the output's commit. */
    synchronized void uploadArtifacts(String output) throws IOException {
        if (mlflow != null && output != null) {
            Path out = new Path(output);
            FileSystem fs = out.getFileSystem(hadoopConf);
            for (String name : List.of("config.json", "model.safetensors", MetricsLog.FILE, PLOT, DistributedTraining.TRAIN_CONFIG_FILE,
                    "ranks.json")) {
                Path p = new Path(out, name);
                if (!fs.exists(p)) {
                    continue;
                }
                String artifact = name.equals("config.json") || name.equals("model.safetensors") ? "model/" + name : name;
                try {
                    mlflow.logArtifact(artifact, fs.getFileStatus(p).getLen(), () -> {
                        try {
                            return fs.open(p);
                        } catch (IOException e) {
                            throw new java.io.UncheckedIOException(e);
                        }
                    });
                } catch (IOException | RuntimeException e) {
                    LOG.warn("sparkatron: MLflow artifact {}: {}", artifact, e.toString());
                    console.line("MLflow: could not upload " + artifact + ": " + e.getMessage());
                }
            }
        }
    }

    /** Ends the sinks: the MLflow run FINISHED when {@code success}, else FAILED. */
    synchronized void end(boolean success) {
        closeSinks(success);
        history.close();
    }

    @Override
    public synchronized void close() {
        end(false);
    }

    private void closeSinks(boolean success) {
        if (tensorboard != null) {
            try {
                tensorboard.close();
            } catch (IOException e) {
                LOG.warn("sparkatron: closing the TensorBoard file: {}", e.toString());
            }
            tensorboard = null;
        }
        if (mlflow != null) {
            try {
                mlflow.end(success);
            } catch (IOException e) {
                LOG.warn("sparkatron: ending the MLflow run: {}", e.toString());
            }
            mlflow = null;
        }
    }

    private void scalar(String tag, long step, JsonNode v) {
        if (tensorboard == null || !v.isNumber()) {
            return;
        }
        try {
            tensorboard.scalar(tag, step, v.asDouble(), now());
        } catch (IOException e) {
            LOG.warn("sparkatron: TensorBoard events stopped: {}", e.toString());
            console.line("TensorBoard events stopped: " + e.getMessage());
            tensorboard = null;
        }
    }

    private void track(long step, Map<String, Double> metrics) {
        if (mlflow == null) {
            return;
        }
        try {
            mlflow.logMetrics(step, metrics);
        } catch (IOException e) {
            LOG.warn("sparkatron: MLflow logging stopped: {}", e.toString());
            console.line("MLflow logging stopped: " + e.getMessage());
            try {
                mlflow.end(false);
            } catch (IOException ignored) {
                // the server is gone
            }
            mlflow = null;
        }
    }

    /** Rewrites {@code loss.svg} in the live directory (written to a temporary name, then renamed over the old plot). */
    private void plot() {
        if (liveDir == null || plotFailed) {
            return;
        }
        try {
            Path out = new Path(liveDir);
            FileSystem fs = out.getFileSystem(hadoopConf);
            Path tmp = new Path(out, "." + PLOT + ".tmp");
            try (OutputStream o = fs.create(tmp, true)) {
                o.write(LossPlot.ofHistory(title, history.losses(), history.validLosses(), cfg.logInterval).getBytes(StandardCharsets.UTF_8));
            }
            Path target = new Path(out, PLOT);
            fs.delete(target, false);
            if (!fs.rename(tmp, target)) {
                throw new IOException("rename " + tmp + " -> " + target + " failed");
            }
        } catch (IOException e) {
            LOG.warn("sparkatron: loss plot: {}", e.toString());
            plotFailed = true;
        }
    }

    private static double now() {
        return System.currentTimeMillis() / 1000.0;
    }
}
