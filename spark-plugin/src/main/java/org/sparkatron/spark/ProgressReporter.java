package org.sparkatron.spark;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The task side of live progress: rank 0 sends one JSON line per step to the driver's
 * {@link ProgressServer}. Best effort: if the driver cannot be reached the reporter logs once and goes
 * quiet; training never waits on it beyond a 5 s connect timeout. Used by one thread.
 */
final class ProgressReporter implements ProgressChannel {
    private static final Logger LOG = LoggerFactory.getLogger(ProgressReporter.class);
    private Socket socket;
    private OutputStream out;

    ProgressReporter(String endpoint, byte[] secret) {
        if (endpoint == null) {
            return;
        }
        int colon = endpoint.lastIndexOf(':');
        try {
            Socket s = new Socket();
            s.connect(new InetSocketAddress(endpoint.substring(0, colon), Integer.parseInt(endpoint.substring(colon + 1))), 5000);
            s.setTcpNoDelay(true);
            out = s.getOutputStream();
            out.write((ProgressServer.token(secret) + "\n").getBytes(StandardCharsets.UTF_8));
            out.flush();
            socket = s;
        } catch (IOException | RuntimeException e) {
            LOG.warn("sparkatron: cannot reach the driver's progress endpoint {} ({}); training goes on without live progress", endpoint, e.toString());
            out = null;
        }
    }

    @Override
    public void report(String jsonLine) {
        if (out == null) {
            return;
        }
        try {
            out.write((jsonLine + "\n").getBytes(StandardCharsets.UTF_8));
            out.flush();
        } catch (IOException e) {
            LOG.warn("sparkatron: progress reports stopped: {}", e.toString());
            out = null;
        }
    }

    @Override
    public void close() {
        try {
            if (socket != null) {
                socket.close();
            }
        } catch (IOException ignored) {
            // closing
        }
    }
}
