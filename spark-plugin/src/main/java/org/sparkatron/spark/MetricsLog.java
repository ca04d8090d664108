package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.NavigableMap;
import java.util.TreeMap;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The run's history, {@code metrics.jsonl} on any Hadoop FileSystem: one JSON line per step (rank 0's step
 * metrics) and one per evaluation ({@code "kind": "eval"}), in step order, written live on the driver (each
 * report appended and flushed with {@code hflush} as it arrives, so HDFS readers see it).
 *
 * <p>History across jobs and retried stages: a job that may resume (it has a checkpoint directory and does
 * not start over) first reads the existing file. When a rank 0 reports where it starts (a {@code start}
 * line: first step F, after resuming from the checkpoint of step F - 1, or 1), every line of step F or later
 * is dropped -- those steps are trained again -- and the file is rewritten, so no step is listed twice and
 * none before the checkpoint is lost. {@link #finish} rewrites the file as the clean trajectory: the lines
 * before the final attempt's first step, then the final attempt's own lines (authoritative, from the ranks'
 * results). Without an output path the history is kept in memory only.
 *
 * <p>Threads: every method is synchronized (reports arrive on progress threads, finish on the driver thread).
 * Best effort while live: a failed write is logged once and live writing stops; {@link #finish} throws.
 */
final class MetricsLog implements java.util.function.Consumer<JsonNode>, AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(MetricsLog.class);
    static final String FILE = "metrics.jsonl";

    private final FileSystem fs;
    private final Path file;
    private FSDataOutputStream out;
    private final TreeMap<Long, String> steps = new TreeMap<>();
    private final TreeMap<Long, String> evals = new TreeMap<>();
    /** The figures of {@code steps} and {@code evals}, parsed once (the plot and the UI read them often). */
    private final TreeMap<Long, Double> stepLoss = new TreeMap<>();
    private final TreeMap<Long, Double> validLoss = new TreeMap<>();
    private final long historyLines;

    /** Replaces {@code output/metrics.jsonl}; throws if the output path cannot be written. */
    MetricsLog(String output, Configuration hadoopConf) throws IOException {
        this(output, hadoopConf, false);
    }

    /**
     * @param output          the job's output path, or null (memory only)
     * @param continueHistory keep the existing file's lines (a job that may resume from a checkpoint)
     */
    MetricsLog(String output, Configuration hadoopConf, boolean continueHistory) throws IOException {
        if (output == null) {
            fs = null;
            file = null;
            historyLines = 0;
            return;
        }
        Path dir = new Path(output);
        FileSystem f = dir.getFileSystem(hadoopConf);
        // the local file system's checksummed streams keep a partial 512-byte chunk on hflush: write raw
        this.fs = f instanceof org.apache.hadoop.fs.ChecksumFileSystem c ? c.getRawFileSystem() : f;
        this.file = new Path(dir, FILE);
        if (continueHistory && fs.exists(file)) {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(fs.open(file), StandardCharsets.UTF_8))) {
                String l;
                int bad = 0;
                while ((l = in.readLine()) != null) {
                    if (!l.isBlank() && !add(l)) {
                        bad++;
                    }
                }
                if (bad > 0) {
                    LOG.warn("sparkatron: {} unreadable line(s) of {} left out of the history", bad, file);
                }
            }
        }
        this.historyLines = steps.size() + evals.size();
        rewrite();
    }

    /** Lines read from an earlier job's file when this one started. */
    synchronized long historyLines() {
        return historyLines;
    }

    @Override
    public synchronized void accept(JsonNode report) {
        String kind = report.path("kind").asText("");
        if (kind.equals("start")) {
            resumeAt(report.path("first_step").asLong(1) - 1);
            return;
        }
        if (!(kind.isEmpty() || kind.equals("eval")) || report.has("message") || !report.has("step")) {
            return;
        }
        String line = report.toString();
        add(line);
        if (out == null) {
            return;
        }
        try {
            out.write((line + "\n").getBytes(StandardCharsets.UTF_8));
            out.hflush();
        } catch (IOException e) {
            LOG.warn("sparkatron: live metrics to {} stopped: {}", file, e.toString());
            closeQuietly();
        }
    }

    /** Drops every line after step {@code lastKept} (they are trained again) and rewrites the file if any was. */
    synchronized void resumeAt(long lastKept) {
        int before = steps.size() + evals.size();
        steps.tailMap(lastKept, false).clear();
        evals.tailMap(lastKept, false).clear();
        stepLoss.tailMap(lastKept, false).clear();
        validLoss.tailMap(lastKept, false).clear();
        if (steps.size() + evals.size() != before) {
            try {
                rewrite();
            } catch (IOException e) {
                LOG.warn("sparkatron: live metrics to {} stopped: {}", file, e.toString());
                closeQuietly();
            }
        }
    }

    /** Step losses so far (step -&gt; loss). */
    synchronized NavigableMap<Long, Double> losses() {
        return new TreeMap<>(stepLoss);
    }

    /** Validation losses so far (step -&gt; loss). */
    synchronized NavigableMap<Long, Double> validLosses() {
        return new TreeMap<>(validLoss);
    }

    /**
     * The trajectory: the lines before the final attempt's first step (its {@code start} line's, else its
     * first step's), then its own step and eval lines; every line in step order, a step before its evaluation.
     */
    synchronized List<String> trajectory(List<String> finalLines) {
        long first = Long.MAX_VALUE;
        TreeMap<Long, String> s = new TreeMap<>();
        TreeMap<Long, String> e = new TreeMap<>();
        for (String l : finalLines) {
            JsonNode n = DistributedTraining.metric(l);
            String kind = n.path("kind").asText("");
            if (kind.equals("start")) {
                first = Math.min(first, n.path("first_step").asLong());
            } else if (kind.isEmpty() && n.has("step")) {
                first = Math.min(first, n.get("step").asLong());
                s.put(n.get("step").asLong(), l);
            } else if (kind.equals("eval")) {
                e.put(n.get("step").asLong(), l);
            }
        }
        TreeMap<Long, String> allSteps = new TreeMap<>(steps.headMap(first));
        allSteps.putAll(s);
        TreeMap<Long, String> allEvals = new TreeMap<>(evals.headMap(first));
        allEvals.putAll(e);
        return merge(allSteps, allEvals);
    }

    /** Ends live writing and rewrites the file as {@link #trajectory}; returns the lines written. */
    synchronized List<String> finish(List<String> finalLines) throws IOException {
        closeQuietly();
        List<String> lines = trajectory(finalLines);
        if (fs != null) {
            try (FSDataOutputStream o = fs.create(file, true)) {
                for (String l : lines) {
                    o.write((l + "\n").getBytes(StandardCharsets.UTF_8));
                }
            }
        }
        return lines;
    }

    private boolean add(String line) {
        try {
            JsonNode n = DistributedTraining.metric(line);
            if (!n.has("step")) {
                return false;
            }
            long step = n.get("step").asLong();
            if (n.path("kind").asText("").equals("eval")) {
                evals.put(step, line);
                validLoss.put(step, n.path("valid_loss").asDouble(Double.NaN));
            } else {
                steps.put(step, line);
                stepLoss.put(step, n.path("loss").asDouble(Double.NaN));
            }
            return true;
        } catch (IllegalArgumentException e) {
            return false;
        }
    }

    private static List<String> merge(TreeMap<Long, String> s, TreeMap<Long, String> e) {
        List<String> lines = new ArrayList<>();
        TreeMap<Long, List<String>> byStep = new TreeMap<>();
        for (Map.Entry<Long, String> x : s.entrySet()) {
            byStep.computeIfAbsent(x.getKey(), k -> new ArrayList<>()).add(0, x.getValue());
        }
        for (Map.Entry<Long, String> x : e.entrySet()) {
            byStep.computeIfAbsent(x.getKey(), k -> new ArrayList<>()).add(x.getValue());
        }
        byStep.values().forEach(lines::addAll);
        return lines;
    }

    /** Writes the current history as the whole file and keeps the stream open for appends. */
    private void rewrite() throws IOException {
        if (fs == null) {
            return;
        }
        closeQuietly();
        out = fs.create(file, true);
        for (String l : merge(steps, evals)) {
            out.write((l + "\n").getBytes(StandardCharsets.UTF_8));
        }
        out.hflush();
    }

    private void closeQuietly() {
        if (out != null) {
            try {
                out.close();
            } catch (IOException e) {
                LOG.debug("closing {}: {}", file, e.toString());
            }
            out = null;
        }
    }

    @Override
    public synchronized void close() {
        closeQuietly();
    }
}
