package org.sparkatron.spark;

import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.apache.spark.BarrierTaskContext;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.Communicators;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.Rendezvous;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;

/**
 * Brings up a rank's world communicator inside a barrier task ({@link Communicators#connect}: TCP across
 * hosts, shared memory for the collectives of ranks on one host): the ranks publish their TCP endpoints
 * through {@code BarrierTaskContext.allGather} (the driver's barrier coordinator) and authenticate with a
 * key derived from the job secret and the stage attempt, so a straggler of a failed attempt can never join
 * the retry. The only class that knows which communicator implementation Spark jobs use.
 *
 * <p>In local mode every rank is a thread of the driver's JVM, and the ranks meet in memory instead
 * ({@link InProcessRendezvous}, one per stage attempt): a rank waiting in {@code allGather} checks for the
 * answer once a second (Spark 4.1's {@code BarrierTaskContext} sleeps 1 s between checks), which cost every
 * local job about a second before its first step.
 */
final class CommWiring {
    private CommWiring() {
    }

    /** Ranks meet through the barrier coordinator: one allGather of base64 blobs. Blocks until all arrive. */
    static final class BarrierRendezvous implements Rendezvous {
        private final BarrierTaskContext ctx;

        BarrierRendezvous(BarrierTaskContext ctx) {
            this.ctx = ctx;
        }

        @Override
        public int rank() {
            return ctx.partitionId();
        }

        @Override
        public int size() {
            return ctx.getTaskInfos().length;
        }

        @Override
        public byte[][] allGather(byte[] mine) {
            String[] all;
            try {
                all = ctx.allGather(Base64.getEncoder().encodeToString(mine));
            } catch (RuntimeException e) {
                throw new CommException("barrier allGather failed on rank " + rank() + ": " + e.getMessage(), -1, e);
            }
            byte[][] out = new byte[all.length][];
            for (int i = 0; i < all.length; i++) {
                out[i] = Base64.getDecoder().decode(all[i]);
            }
            return out;
        }
    }

    /** The world communicator of this task's rank; blocks until every rank is connected. */
    static Communicator connect(BarrierTaskContext ctx, byte[] jobSecret, long timeoutMs) {
        int world = ctx.getTaskInfos().length;
        if (world == 1) {
            return new SelfCommunicator();
        }
        // the executor's address as the scheduler knows it: reachable by the other executors
        String host = ctx.getTaskInfos()[ctx.partitionId()].address();
        int colon = host.lastIndexOf(':');
        if (colon > 0) {
            host = host.substring(0, colon);
        }
        TcpOptions opts = TcpOptions.defaults().withHosts(isLoopback(host) ? "127.0.0.1" : "0.0.0.0", host)
                .withTimeouts(Math.min(timeoutMs, 120_000), timeoutMs);
        byte[] key = attemptKey(jobSecret, ctx.stageAttemptNumber());
        if (!"driver".equals(org.apache.spark.SparkEnv.get().executorId())) { // SparkContext.DRIVER_IDENTIFIER: local mode
            // Ranks of one host (several executors or tasks per machine) get shared-memory collectives.
            return Communicators.connect(ctx.partitionId(), world, new BarrierRendezvous(ctx), key, opts);
        }
        // local mode: every task runs in this JVM
        String id = Base64.getEncoder().encodeToString(key);
        LocalMeeting m = LOCAL.compute(id, (k, v) -> v == null ? new LocalMeeting(new InProcessRendezvous(world, timeoutMs), 1)
                : new LocalMeeting(v.rendezvous, v.ranks + 1));
        try {
            return Communicators.connect(ctx.partitionId(), world, m.rendezvous.forRank(ctx.partitionId()), key, opts);
        } finally { // the last rank of the attempt to finish connecting (or failing) forgets the meeting
            LOCAL.computeIfPresent(id, (k, v) -> v.ranks == 1 ? null : new LocalMeeting(v.rendezvous, v.ranks - 1));
        }
    }

    /** Local mode's meetings by stage attempt key: the rendezvous and how many ranks are inside it. */
    private static final Map<String, LocalMeeting> LOCAL = new ConcurrentHashMap<>();

    private record LocalMeeting(InProcessRendezvous rendezvous, int ranks) {
    }

    private static boolean isLoopback(String host) {
        return host.equals("localhost") || host.startsWith("127.");
    }

    /** HMAC-SHA256(jobSecret, "attempt:" + n): one key per stage attempt. */
    static byte[] attemptKey(byte[] jobSecret, int attempt) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(jobSecret, "HmacSHA256"));
            return mac.doFinal(("attempt:" + attempt).getBytes(StandardCharsets.UTF_8));
        } catch (java.security.GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 unavailable", e);
        }
    }
}
