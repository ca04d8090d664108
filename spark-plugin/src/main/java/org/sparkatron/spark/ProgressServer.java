package org.sparkatron.spark;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.Locale;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Consumer;
import com.fasterxml.jackson.databind.JsonNode;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Live progress on the driver: a small TCP endpoint the job's rank 0 reports each step to (one JSON line
 * per step after a token line derived from the job secret; anything else is dropped). Each report
 * becomes a log line and a console progress line (step, loss, lr, tokens/s, ETA) and goes to the
 * listener (the job's live {@code metrics.jsonl}); a report with a {@code message} field (rank 0's
 * checkpoint events) becomes a log and console line only. Works wherever
 * executors can reach the driver, which Spark needs anyway; no plugin or configuration.
 *
 * <p>Threads: one daemon acceptor plus one daemon reader per connection. Best effort by design: a lost
 * report never affects training. {@link #close} stops everything.
 */
final class ProgressServer implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ProgressServer.class);

    private final ServerSocket server;
    private final String advertise;
    private final String token;
    private final int steps;
    private final PrintStream console;
    private final Consumer<JsonNode> listener;
    private final AtomicLong reports = new AtomicLong();
    private volatile long firstReportNanos;
    private volatile long firstReportStep;
    private volatile boolean closed;

    ProgressServer(String bindHost, String advertiseHost, byte[] secret, int steps, PrintStream console,
                   Consumer<JsonNode> listener) throws IOException {
        this.server = new ServerSocket();
        server.bind(new InetSocketAddress(InetAddress.getByName(bindHost), 0));
        this.advertise = advertiseHost;
        this.token = token(secret);
        this.steps = steps;
        this.console = console;
        this.listener = listener;
        Thread t = new Thread(this::acceptLoop, "sparkatron-progress");
        t.setDaemon(true);
        t.start();
    }

    String endpoint() {
        return advertise + ":" + server.getLocalPort();
    }

    long reports() {
        return reports.get();
    }

    static String token(byte[] secret) {
        try {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            md.update("sparkatron-progress:".getBytes(StandardCharsets.UTF_8));
            return java.util.HexFormat.of().formatHex(md.digest(secret));
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    private void acceptLoop() {
        while (!closed) {
            try {
                Socket s = server.accept();
                Thread r = new Thread(() -> read(s), "sparkatron-progress-reader");
                r.setDaemon(true);
                r.start();
            } catch (IOException e) {
                if (!closed) {
                    LOG.warn("progress endpoint stopped accepting: {}", e.toString());
                }
                return;
            }
        }
    }

    private void read(Socket s) {
        try (s; BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8))) {
            s.setSoTimeout(0);
            String first = in.readLine();
            if (first == null || !MessageDigest.isEqual(first.getBytes(StandardCharsets.UTF_8), token.getBytes(StandardCharsets.UTF_8))) {
                LOG.warn("progress endpoint: rejected a connection from {} (bad token)", s.getRemoteSocketAddress());
                return;
            }
            String line;
            while ((line = in.readLine()) != null && !closed) {
                JsonNode n = TrainConfig.JSON.readTree(line);
                onReport(n);
            }
        } catch (IOException | RuntimeException e) {
            if (!closed) {
                LOG.debug("progress connection ended: {}", e.toString());
            }
        }
    }

    private synchronized void onReport(JsonNode n) {
        if (n.has("message")) { // an event of rank 0 (resumed, checkpoint saved): a log line, not a step
            String line = "rank 0" + (n.path("attempt").asInt() > 0 ? " (attempt " + n.path("attempt").asInt() + ")" : "")
                    + ": " + n.path("message").asText();
            LOG.info("sparkatron: {}", line);
            if (console != null) {
                console.println("[sparkatron] " + line);
                console.flush();
            }
            if (listener != null) { // the job's monitor reports events too
                listener.accept(n);
            }
            return;
        }
        long step = n.path("step").asLong();
        long now = System.nanoTime();
        if (reports.getAndIncrement() == 0 || step <= firstReportStep) {
            firstReportNanos = now;
            firstReportStep = step;
        }
        double perStep = step > firstReportStep ? (now - firstReportNanos) / 1e9 / (step - firstReportStep)
                : n.path("step_s").asDouble();
        long etaS = Math.round(perStep * Math.max(0, steps - step));
        String line = String.format(Locale.ROOT, "step %d/%d  loss %.4f  lr %.3g  %.0f tok/s  ETA %d:%02d%s", step, steps,
                n.path("loss").asDouble(), n.path("lr").asDouble(), n.path("tokens_per_s").asDouble(), etaS / 60, etaS % 60,
                n.path("attempt").asInt() > 0 ? "  (attempt " + n.path("attempt").asInt() + ")" : "");
        LOG.info("sparkatron: {}", line);
        if (console != null) {
            console.println("[sparkatron] " + line);
            console.flush();
        }
        if (listener != null) {
            listener.accept(n);
        }
    }

    @Override
    public void close() {
        closed = true;
        try {
            server.close();
        } catch (IOException ignored) {
            // closing: nothing to do
        }
    }
}
