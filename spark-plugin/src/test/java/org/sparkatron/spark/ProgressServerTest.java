package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.management.ManagementFactory;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The driver's progress endpoint under the probes of issue 22, as a hostile local client would send
 * them: hundreds of idle connections, a gigantic line without a newline (before and after a valid
 * token), a client that sends its token one byte at a time (slowloris), a wrong token. The server's
 * threads, open connections and buffered bytes stay bounded, and the real rank's reports still arrive.
 */
@Timeout(60)
class ProgressServerTest {
    private static final byte[] SECRET = "progress-server-test-secret-0123".getBytes(StandardCharsets.UTF_8);
    private static final int MiB = 1 << 20;

    private static Socket connect(ProgressServer server) throws IOException {
        String ep = server.endpoint();
        int colon = ep.lastIndexOf(':');
        Socket s = new Socket();
        s.connect(new InetSocketAddress(ep.substring(0, colon), Integer.parseInt(ep.substring(colon + 1))), 5000);
        return s;
    }

    /** True when the server has closed {@code s} (EOF or reset), false if it is still open after {@code waitMs}. */
    private static boolean closedByServer(Socket s, int waitMs) throws IOException {
        s.setSoTimeout(waitMs);
        InputStream in = s.getInputStream();
        try {
            return in.read() < 0; // the server never sends anything: any return is EOF
        } catch (SocketTimeoutException e) {
            return false;
        } catch (IOException reset) {
            return true;
        }
    }

    /** Writes up to {@code limit} bytes without a newline; returns how many the server let through before closing. */
    private static long flood(Socket s, byte[] prefix, long limit) {
        byte[] chunk = new byte[64 * 1024];
        java.util.Arrays.fill(chunk, (byte) 'x');
        long written = 0;
        try {
            OutputStream out = s.getOutputStream();
            out.write(prefix);
            while (written < limit) {
                out.write(chunk);
                written += chunk.length;
            }
        } catch (IOException closed) {
            // the server cut the connection: what we measure
        }
        return written;
    }

    private static void awaitReport(List<JsonNode> got, int step) throws InterruptedException {
        long deadline = System.currentTimeMillis() + 10_000;
        while (got.stream().noneMatch(n -> n.path("step").asInt() == step)) {
            assertTrue(System.currentTimeMillis() < deadline, "report of step " + step + " did not arrive: " + got);
            Thread.sleep(20);
        }
    }

    @Test
    void hundredsOfIdleConnectionsAddNoThreadsAndTheRankStillReports() throws Exception {
        List<JsonNode> got = new CopyOnWriteArrayList<>();
        try (ProgressServer server = new ProgressServer("127.0.0.1", "127.0.0.1", SECRET, 10, null, got::add)) {
            int threadsBefore = ManagementFactory.getThreadMXBean().getThreadCount();
            List<Socket> idle = new ArrayList<>();
            try {
                for (int i = 0; i < 300; i++) {
                    idle.add(connect(server));
                }
                Thread.sleep(500);
                int threadsAfter = ManagementFactory.getThreadMXBean().getThreadCount();
                assertTrue(threadsAfter <= threadsBefore + 2, "threads " + threadsBefore + " -> " + threadsAfter + " for 300 idle connections");
                int stillOpen = 0;
                for (Socket s : idle) {
                    if (!closedByServer(s, 20)) {
                        stillOpen++;
                    }
                }
                System.out.printf("progress endpoint, 300 idle connections: JVM threads %d -> %d, %d still open%n",
                        threadsBefore, threadsAfter, stillOpen);
                assertTrue(stillOpen <= ProgressServer.MAX_CONNECTIONS,
                        stillOpen + " of 300 idle connections still held (at most " + ProgressServer.MAX_CONNECTIONS + ")");
                // the real rank arrives while the idle ones are still connected on the client side
                try (ProgressReporter rank0 = new ProgressReporter(server.endpoint(), SECRET)) {
                    rank0.report("{\"step\": 1, \"loss\": 2.5}");
                    awaitReport(got, 1);
                }
            } finally {
                for (Socket s : idle) {
                    s.close();
                }
            }
        }
    }

    @Test
    void aGiantLineIsCutOffBeforeTheTokenAndAfterIt() throws Exception {
        List<JsonNode> got = new CopyOnWriteArrayList<>();
        try (ProgressServer server = new ProgressServer("127.0.0.1", "127.0.0.1", SECRET, 10, null, got::add)) {
            long heapBefore = usedHeapAfterGc();
            try (Socket s = connect(server)) { // no token: the server reads the token's length and stops
                long through = flood(s, new byte[0], 256L * MiB);
                System.out.printf("progress endpoint, 256 MiB without a token: cut after %d KiB sent, heap %+d MiB%n",
                        through / 1024, (usedHeapAfterGc() - heapBefore) / MiB);
                assertTrue(through < 16L * MiB, "the server accepted " + through / MiB + " MiB without a newline or token");
                assertTrue(usedHeapAfterGc() - heapBefore < 64L * MiB, "heap grew by "
                        + (usedHeapAfterGc() - heapBefore) / MiB + " MiB");
            }
            try (Socket s = connect(server)) { // a valid token, then no newline: cut at the line limit
                byte[] token = (ProgressServer.token(SECRET) + "\n").getBytes(StandardCharsets.UTF_8);
                long through = flood(s, token, 256L * MiB);
                System.out.printf("progress endpoint, a valid token then 256 MiB without a newline: cut after %d KiB sent%n", through / 1024);
                assertTrue(through < 16L * MiB, "the server accepted " + through / MiB + " MiB of one line");
            }
            try (ProgressReporter rank0 = new ProgressReporter(server.endpoint(), SECRET)) {
                rank0.report("{\"step\": 2, \"loss\": 2.0}");
                awaitReport(got, 2);
            }
        }
    }

    @Test
    void aSlowOrWrongTokenIsDroppedAtTheHandshakeDeadline() throws Exception {
        List<JsonNode> got = new CopyOnWriteArrayList<>();
        try (ProgressServer server = new ProgressServer("127.0.0.1", "127.0.0.1", SECRET, 10, null, got::add, 1000)) {
            try (Socket slow = connect(server)) { // slowloris: the right token, one byte every 100 ms
                byte[] token = (ProgressServer.token(SECRET) + "\n").getBytes(StandardCharsets.UTF_8);
                long start = System.nanoTime();
                boolean cut = false;
                try {
                    for (byte b : token) {
                        slow.getOutputStream().write(b);
                        slow.getOutputStream().flush();
                        Thread.sleep(100);
                    }
                } catch (IOException e) {
                    cut = true;
                }
                cut = cut || closedByServer(slow, 3000);
                double seconds = (System.nanoTime() - start) / 1e9;
                assertTrue(cut, "a client still sending its token after " + seconds + " s was kept");
                assertTrue(seconds < 5, "dropped only after " + seconds + " s (deadline 1 s)");
            }
            try (Socket wrong = connect(server)) {
                wrong.getOutputStream().write(("0".repeat(64) + "\n{\"step\": 7, \"loss\": 1}\n").getBytes(StandardCharsets.UTF_8));
                assertTrue(closedByServer(wrong, 3000), "a wrong token was kept open");
            }
            assertEquals(List.of(), got, "nothing from unauthenticated clients reaches the listener");
        }
    }

    private static long usedHeapAfterGc() {
        System.gc();
        return ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed();
    }
}
