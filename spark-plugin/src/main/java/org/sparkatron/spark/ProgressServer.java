package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.io.PrintStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Consumer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Live progress on the driver: a small TCP endpoint the job's rank 0 reports each step to (a token line
 * derived from the job secret, then one JSON line per step). Each report becomes a log line and a
 * console progress line (step, loss, lr, tokens/s, ETA) and goes to the listener (the job's live
 * {@code metrics.jsonl}); a report with a {@code message} field (rank 0's checkpoint events) becomes a
 * log and console line only. Works wherever executors can reach the driver, which Spark needs anyway; no
 * plugin or configuration.
 *
 * <p>Hostile clients cannot grow it: the endpoint is open for the whole job, and in local mode the
 * training ranks share its JVM. One thread serves every connection (non-blocking I/O). A connection
 * must send the token ({@value #TOKEN_LENGTH} bytes and a newline, compared in constant time only once
 * all of it is in, so a mismatch reveals nothing) within the handshake deadline (10 s) or it is closed;
 * before that, nothing it sends is buffered beyond the token's length. At most {@link #MAX_CONNECTIONS}
 * connections are open: a new one displaces the oldest unauthenticated one. After the token, a line
 * longer than {@link #MAX_LINE} bytes closes the connection. So the server holds one thread and at most
 * {@code MAX_CONNECTIONS x MAX_LINE} bytes of buffers, whatever clients do.
 *
 * <p>A line with a {@code failure} field is a rank's deterministic failure ({@link FailureNotice}), not a
 * report: it goes to the failure handler ({@link #onFailure}), and then the server answers {@code ok} on the
 * same connection, so the rank knows the driver has acted before it fails its task.
 *
 * <p>Threads: the listener, the failure handler and the console are called on the server's thread (one
 * report at a time). Best effort by design: a lost report never affects training. {@link #close} stops everything.
 */
final class ProgressServer implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(ProgressServer.class);

    /** Open connections at most (a job has one reporting rank per stage attempt). */
    static final int MAX_CONNECTIONS = 16;
    /** Longest report line after the token (a step report is a few hundred bytes). */
    static final int MAX_LINE = 64 * 1024;
    /** Hex digits of the token. */
    static final int TOKEN_LENGTH = 64;
    static final long HANDSHAKE_MS = 10_000;

    private final ServerSocketChannel server;
    private final Selector selector;
    private final Thread thread;
    private final String advertise;
    private final byte[] tokenLine;
    private final long handshakeMs;
    private final int steps;
    private final PrintStream console;
    private final Consumer<JsonNode> listener;
    /** Open connections, oldest first; touched only by the server thread. */
    private final Map<SocketChannel, Connection> connections = new LinkedHashMap<>();
    private final AtomicLong reports = new AtomicLong();
    private volatile long firstReportNanos;
    private volatile long firstReportStep;
    private volatile boolean closed;
    private volatile java.util.function.BiConsumer<Boolean, String> failureHandler; // (badInput, message), or null

    /** One client: its token bytes until authenticated, then its partial line. */
    private static final class Connection {
        final long deadlineNanos;
        ByteBuffer buffer = ByteBuffer.allocate(TOKEN_LENGTH + 1);
        boolean authenticated;

        Connection(long deadlineNanos) {
            this.deadlineNanos = deadlineNanos;
        }
    }

    ProgressServer(String bindHost, String advertiseHost, byte[] secret, int steps, PrintStream console,
                   Consumer<JsonNode> listener) throws IOException {
        this(bindHost, advertiseHost, secret, steps, console, listener, HANDSHAKE_MS);
    }

    /** With another handshake deadline (tests). */
    ProgressServer(String bindHost, String advertiseHost, byte[] secret, int steps, PrintStream console,
                   Consumer<JsonNode> listener, long handshakeMs) throws IOException {
        this.advertise = advertiseHost;
        this.tokenLine = (token(secret) + "\n").getBytes(StandardCharsets.US_ASCII);
        this.handshakeMs = handshakeMs;
        this.steps = steps;
        this.console = console;
        this.listener = listener;
        this.selector = Selector.open();
        this.server = ServerSocketChannel.open();
        try {
            server.bind(new InetSocketAddress(InetAddress.getByName(bindHost), 0), 128); // a full backlog would make clients retry for seconds
            server.configureBlocking(false);
            server.register(selector, SelectionKey.OP_ACCEPT);
        } catch (IOException e) {
            server.close();
            selector.close();
            throw e;
        }
        this.thread = new Thread(this::serve, "sparkatron-progress");
        thread.setDaemon(true);
        thread.start();
    }

    String endpoint() {
        return advertise + ":" + server.socket().getLocalPort();
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

    private void serve() {
        try {
            while (!closed) {
                selector.select(Math.max(1, Math.min(250, handshakeMs / 4)));
                for (SelectionKey key : selector.selectedKeys()) {
                    if (!key.isValid()) {
                        continue;
                    }
                    if (key.isAcceptable()) {
                        accept();
                    } else if (key.isReadable()) {
                        read((SocketChannel) key.channel());
                    }
                }
                selector.selectedKeys().clear();
                expireHandshakes();
            }
        } catch (IOException | RuntimeException e) {
            if (!closed) {
                LOG.warn("progress endpoint stopped: {}", e.toString());
            }
        } finally {
            for (SocketChannel c : new ArrayList<>(connections.keySet())) {
                drop(c);
            }
        }
    }

    private void accept() throws IOException {
        SocketChannel c;
        while ((c = server.accept()) != null) {
            if (connections.size() >= MAX_CONNECTIONS && !displaceOldestUnauthenticated()) {
                LOG.warn("progress endpoint: refused a connection from {} ({} authenticated connections open)",
                        c.getRemoteAddress(), connections.size());
                c.close();
                continue;
            }
            c.configureBlocking(false);
            c.register(selector, SelectionKey.OP_READ);
            connections.put(c, new Connection(System.nanoTime() + handshakeMs * 1_000_000L));
        }
    }

    private boolean displaceOldestUnauthenticated() {
        for (Map.Entry<SocketChannel, Connection> e : connections.entrySet()) {
            if (!e.getValue().authenticated) {
                LOG.debug("progress endpoint: dropping an unauthenticated connection for a new one");
                drop(e.getKey());
                return true;
            }
        }
        return false;
    }

    private void expireHandshakes() {
        long now = System.nanoTime();
        List<SocketChannel> late = new ArrayList<>();
        connections.forEach((c, conn) -> {
            if (!conn.authenticated && now - conn.deadlineNanos > 0) {
                late.add(c);
            }
        });
        for (SocketChannel c : late) {
            LOG.warn("progress endpoint: dropped {} (no token within {} ms)", remote(c), handshakeMs);
            drop(c);
        }
    }

    /** Who handles a rank's failure notice ({@code badInput}, message) before it is acknowledged. */
    void onFailure(java.util.function.BiConsumer<Boolean, String> handler) {
        this.failureHandler = handler;
    }

    private void read(SocketChannel c) {
        Connection conn = connections.get(c);
        if (conn == null) {
            return;
        }
        try {
            while (true) {
                int n = c.read(conn.buffer);
                if (n < 0) {
                    drop(c);
                    return;
                }
                if (!conn.authenticated) {
                    if (conn.buffer.hasRemaining()) {
                        return; // more token bytes to come
                    }
                    if (!MessageDigest.isEqual(conn.buffer.array(), tokenLine)) {
                        LOG.warn("progress endpoint: rejected a connection from {} (bad token)", remote(c));
                        drop(c);
                        return;
                    }
                    conn.authenticated = true;
                    conn.buffer = ByteBuffer.allocate(4096);
                    continue;
                }
                if (!takeLines(c, conn)) {
                    LOG.warn("progress endpoint: dropped {} (a line longer than {} bytes)", remote(c), MAX_LINE);
                    drop(c);
                    return;
                }
                if (n == 0) {
                    return;
                }
            }
        } catch (IOException e) {
            LOG.debug("progress connection ended: {}", e.toString());
            drop(c);
        }
    }

    /** Hands over every complete line in the buffer and grows it for a partial one; false past {@link #MAX_LINE}. */
    private boolean takeLines(SocketChannel c, Connection conn) {
        ByteBuffer b = conn.buffer;
        byte[] a = b.array();
        int start = 0;
        for (int i = 0; i < b.position(); i++) {
            if (a[i] == '\n') {
                report(c, new String(a, start, i - start, StandardCharsets.UTF_8));
                start = i + 1;
            }
        }
        int rest = b.position() - start;
        if (rest > MAX_LINE) {
            return false;
        }
        System.arraycopy(a, start, a, 0, rest);
        b.position(rest);
        if (!b.hasRemaining()) { // a partial line fills the buffer: double it, up to the line limit
            ByteBuffer bigger = ByteBuffer.allocate(Math.min(2 * b.capacity(), MAX_LINE + 1));
            bigger.put(a, 0, rest);
            conn.buffer = bigger;
        }
        return true;
    }

    private void report(SocketChannel c, String line) {
        if (line.isBlank()) {
            return;
        }
        JsonNode n;
        try {
            n = TrainConfig.JSON.readTree(line);
        } catch (IOException e) {
            LOG.debug("progress endpoint: dropped a line that is not JSON: {}", e.toString());
            return;
        }
        if (n.has("failure")) {
            java.util.function.BiConsumer<Boolean, String> h = failureHandler;
            try {
                if (h != null) {
                    h.accept(n.path("bad_input").asBoolean(), n.path("failure").asText());
                }
                // 3 bytes into an idle connection's empty send buffer: a non-blocking write takes them whole
                c.write(ByteBuffer.wrap(FailureNotice.ACK.getBytes(StandardCharsets.UTF_8)));
            } catch (IOException | RuntimeException e) {
                LOG.warn("progress endpoint: a failure notice: {}", e.toString());
            }
            return;
        }
        try {
            onReport(n);
        } catch (RuntimeException e) {
            LOG.warn("progress endpoint: a report failed: {}", e.toString());
        }
    }

    private static String remote(SocketChannel c) {
        try {
            return String.valueOf(c.getRemoteAddress());
        } catch (IOException e) {
            return "(closed)";
        }
    }

    private void drop(SocketChannel c) {
        connections.remove(c);
        try {
            c.close();
        } catch (IOException ignored) {
            // closing
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

    /** Stops accepting and reading and closes every connection; waits up to 5 s for the server thread. */
    @Override
    public void close() {
        closed = true;
        selector.wakeup();
        try {
            thread.join(5000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        try {
            server.close();
            selector.close();
        } catch (IOException ignored) {
            // closing: nothing to do
        }
    }
}
