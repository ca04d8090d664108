package org.sparkatron.spark;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import org.apache.spark.api.plugin.PluginContext;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The rank side of {@link FailFast}'s notice: before a rank fails its task with a {@link DeterministicFailure}
 * it asks the driver to end the job, and waits for the answer, so that Spark's scheduler has the job's
 * cancellation before the attempt's first task failure and never resubmits the barrier stage. Over Spark's
 * RPC where the Sparkatron plugin is installed ({@link SparkatronPlugin.Failure}), else over the driver's
 * progress endpoint ({@link ProgressServer}: a token line, a {@code failure} line, the answer {@value #ACK}).
 *
 * <p>Any rank may send it, once, from its training thread. Blocking: at most {@link #CONNECT_MS} to connect
 * and {@link #ANSWER_MS} for the answer (the driver answers at once; the bounds only keep a rank whose
 * driver is gone from waiting for good). A notice that cannot be delivered is logged and the rank fails as
 * before: the driver's listener then ends the job (with a retry possibly already submitted under load).
 */
final class FailureNotice {
    private static final Logger LOG = LoggerFactory.getLogger(FailureNotice.class);
    /** The progress endpoint's answer to a failure line. */
    static final String ACK = "ok\n";
    static final int CONNECT_MS = 5_000;
    static final int ANSWER_MS = 30_000;

    private FailureNotice() {
    }

    /**
     * Tells the driver of job {@code pluginJob} (over the plugin; null: no plugin) or of the progress endpoint
     * {@code endpoint} ("host:port", authenticated with {@code secret}) that this rank fails with {@code d}.
     *
     * @return whether the driver answered (it has queued the job's cancellation)
     */
    static boolean send(String pluginJob, String endpoint, byte[] secret, DeterministicFailure d) {
        try {
            if (pluginJob != null) {
                PluginContext ctx = SparkatronPlugin.executorContext();
                if (ctx == null) {
                    LOG.warn("sparkatron: the driver has the Sparkatron plugin but this executor does not; cannot tell it of {}",
                            d.getMessage());
                    return false;
                }
                return Boolean.TRUE.equals(ctx.ask(new SparkatronPlugin.Failure(pluginJob, d.badInput(), d.getMessage())));
            }
            if (endpoint == null) {
                return false;
            }
            return overSocket(endpoint, secret, d);
        } catch (Exception e) { // PluginContext.ask throws Exception
            LOG.warn("sparkatron: could not tell the driver of a deterministic failure ({}): {}", e.toString(), d.getMessage());
            return false;
        }
    }

    private static boolean overSocket(String endpoint, byte[] secret, DeterministicFailure d) throws IOException {
        int colon = endpoint.lastIndexOf(':');
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress(endpoint.substring(0, colon), Integer.parseInt(endpoint.substring(colon + 1))), CONNECT_MS);
            s.setSoTimeout(ANSWER_MS);
            OutputStream out = s.getOutputStream();
            String line = TrainConfig.JSON.createObjectNode().put("failure", d.getMessage()).put("bad_input", d.badInput()).toString();
            out.write((ProgressServer.token(secret) + "\n" + line + "\n").getBytes(StandardCharsets.UTF_8));
            out.flush();
            InputStream in = s.getInputStream();
            byte[] answer = in.readNBytes(ACK.length());
            return ACK.equals(new String(answer, StandardCharsets.UTF_8));
        }
    }
}
