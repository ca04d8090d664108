package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The job's {@code metrics.jsonl} on any Hadoop FileSystem, written live on the driver: every step
 * report that reaches the {@link ProgressServer} is appended and flushed ({@code hflush}, so HDFS
 * readers see it) as it arrives, in arrival order, every attempt's steps included (each line carries
 * its {@code attempt}). When the job ends, {@link #finish} rewrites the file as the clean trajectory:
 * one line per step, the final attempt's lines (authoritative, from the ranks' results) and, for the
 * steps before it resumed from a checkpoint, the latest earlier attempt's live reports.
 *
 * <p>Threads: {@link #accept} is called by the progress server's reader threads, {@link #finish} and
 * {@link #close} by the driver thread; all are synchronized. Best effort while live: a failed write is
 * logged once and live writing stops (training is never affected); {@link #finish} throws on failure.
 */
final class MetricsLog implements java.util.function.Consumer<JsonNode>, AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(MetricsLog.class);
    static final String FILE = "metrics.jsonl";

    private final FileSystem fs;
    private final Path file;
    private FSDataOutputStream out;
    /** Latest report per step (a later attempt's report of a step replaces the earlier one). */
    private final TreeMap<Long, String> byStep = new TreeMap<>();

    /** Creates (replaces) {@code output/metrics.jsonl}; throws if the output path cannot be written. */
    MetricsLog(String output, Configuration hadoopConf) throws IOException {
        Path dir = new Path(output);
        FileSystem f = dir.getFileSystem(hadoopConf);
        // the local file system's checksummed streams keep a partial 512-byte chunk on hflush: write raw
        this.fs = f instanceof org.apache.hadoop.fs.ChecksumFileSystem c ? c.getRawFileSystem() : f;
        this.file = new Path(dir, FILE);
        this.out = fs.create(file, true);
    }

    @Override
    public synchronized void accept(JsonNode report) {
        if (!report.has("step")) {
            return;
        }
        String line = report.toString();
        byStep.put(report.get("step").asLong(), line);
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

    /**
     * The trajectory: {@code finalLines} (the successful attempt's rank 0 metrics, steps in order), preceded
     * by the live reports of the steps before its first step.
     */
    synchronized List<String> trajectory(List<String> finalLines) {
        long first = finalLines.isEmpty() ? Long.MAX_VALUE : DistributedTraining.metric(finalLines.get(0)).path("step").asLong();
        List<String> lines = new ArrayList<>();
        for (Map.Entry<Long, String> e : byStep.headMap(first).entrySet()) {
            lines.add(e.getValue());
        }
        lines.addAll(finalLines);
        return lines;
    }

    /** Ends live writing and rewrites the file as {@link #trajectory}; returns the lines written. */
    synchronized List<String> finish(List<String> finalLines) throws IOException {
        closeQuietly();
        List<String> lines = trajectory(finalLines);
        try (FSDataOutputStream o = fs.create(file, true)) {
            for (String l : lines) {
                o.write((l + "\n").getBytes(StandardCharsets.UTF_8));
            }
        }
        return lines;
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
