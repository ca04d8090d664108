package org.sparkatron.comm.tcp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.OutputStream;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Rendezvous;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Failures end in a clear {@link CommException} on every surviving rank, within the timeout, naming the
 * peer at fault. Timeouts here are short (1.5-3 s) to keep the suite fast; the assertions allow generous
 * slack above them because the machine is shared and slow.
 */
class TcpFailureTest {
    private static void assertFailedNaming(Ranks.Outcome<?> o, int peer, long withinMs, String what) {
        assertNotNull(o.error, what + ": expected a failure, got " + o.value);
        assertEquals(CommException.class, o.error.getClass(), what + ": " + o.error);
        CommException e = (CommException) o.error;
        assertEquals(peer, e.peer(), what + ": exception names peer " + e.peer() + ": " + e.getMessage());
        assertTrue(e.getMessage().contains("rank " + peer), what + ": message does not name rank " + peer + ": "
                + e.getMessage());
        assertTrue(o.elapsedMs < withinMs, what + ": took " + o.elapsedMs + " ms");
    }

    @Test
    @Timeout(30)
    void rankThatNeverArrivesFailsTheOthersNamingIt() throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(3, 1500);
        List<Ranks.Outcome<Object>> outs = Ranks.runEach(2, r -> TcpCommunicator.create(r, 3, rv.forRank(r),
                Ranks.SECRET, Ranks.fast()), 20);
        for (Ranks.Outcome<Object> o : outs) {
            assertNotNull(o.error);
            assertTrue(o.error.getMessage().contains("never arrived: [2]"), o.error.getMessage());
            assertTrue(o.elapsedMs < 8000, "took " + o.elapsedMs);
        }
    }

    /** Rank 2's slot is taken by an impostor that publishes a dead endpoint and sends garbage to the others. */
    @Test
    @Timeout(30)
    void garbageOnThePortIsRejectedAndTheMissingRankIsNamed() throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(3, 10_000);
        TcpOptions opts = Ranks.fast().withTimeouts(3000, 3000);
        Thread impostor = new Thread(() -> {
            try (ServerSocket dead = new ServerSocket(0)) {
                byte[][] blobs = rv.forRank(2).allGather(("127.0.0.1:" + dead.getLocalPort()).getBytes(StandardCharsets.UTF_8));
                for (int r = 0; r < 2; r++) {
                    String[] hp = new String(blobs[r], StandardCharsets.UTF_8).split(":");
                    try (Socket s = new Socket(hp[0], Integer.parseInt(hp[1]))) {
                        OutputStream out = s.getOutputStream();
                        out.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abcdefghijklmnopqrstuvwxyz".getBytes(StandardCharsets.UTF_8));
                        out.flush();
                        Thread.sleep(200);
                    }
                }
                Thread.sleep(4000);
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        impostor.start();
        List<Ranks.Outcome<Object>> outs = Ranks.runEach(2, r -> TcpCommunicator.create(r, 3, rv.forRank(r),
                Ranks.SECRET, opts), 20);
        impostor.join();
        for (int r = 0; r < 2; r++) {
            Ranks.Outcome<Object> o = outs.get(r);
            assertFailedNaming(o, 2, 9000, "rank " + r);
        }
        // Rank 0 and 1 connect to each other; rank 1 dials the dead endpoint, ranks 0's listener saw garbage.
        assertTrue(outs.get(0).error.getMessage().contains("bad hello magic"), outs.get(0).error.getMessage());
    }

    @Test
    @Timeout(30)
    void garbageBeforeTheRealRankConnectsDoesNotBreakTheGroup() throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(2, 10_000);
        Rendezvous spy0 = new Rendezvous() {
            final Rendezvous inner = rv.forRank(0);

            @Override
            public int rank() {
                return 0;
            }

            @Override
            public int size() {
                return 2;
            }

            @Override
            public byte[][] allGather(byte[] mine) {
                // The garbage reaches rank 0's listener before rank 1 even learns the address.
                String[] hp = new String(mine, StandardCharsets.UTF_8).split(":");
                try (Socket s = new Socket(hp[0], Integer.parseInt(hp[1]))) {
                    s.getOutputStream().write(new byte[] {0x16, 0x03, 0x01, 0, 0x50, 1, 2, 3});
                    s.getOutputStream().write(new byte[200]);
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
                return inner.allGather(mine);
            }
        };
        List<Ranks.Outcome<Integer>> outs = Ranks.runEach(2, r -> {
            try (TcpCommunicator c = TcpCommunicator.create(r, 2, r == 0 ? spy0 : rv.forRank(1), Ranks.SECRET,
                    Ranks.fast())) {
                Tensor t = Tensor.allocateHost(DType.I32, 5);
                t.ints().put(0, r + 1);
                c.allReduce(t, ReduceOp.SUM);
                assertEquals(3, t.ints().get(0));
                long end = System.nanoTime() + 5_000_000_000L;
                while (r == 0 && c.rejectedConnections() == 0 && System.nanoTime() < end) {
                    Thread.sleep(10);
                }
                c.barrier();
                return c.rejectedConnections();
            }
        }, 20);
        assertNull(outs.get(0).error);
        assertNull(outs.get(1).error);
        assertEquals(1, outs.get(0).value, "rank 0 rejected the garbage connection");
    }

    @Test
    @Timeout(30)
    void wrongSecretFailsEveryRank() throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(3, 10_000);
        TcpOptions opts = Ranks.fast().withTimeouts(2000, 2000);
        byte[] wrong = "another-job-secret-xxxxxxxxxxxxx".getBytes(StandardCharsets.UTF_8);
        List<Ranks.Outcome<Object>> outs = Ranks.runEach(3, r -> TcpCommunicator.create(r, 3, rv.forRank(r),
                r == 2 ? wrong : Ranks.SECRET, opts), 20);
        assertFailedNaming(outs.get(0), 2, 8000, "rank 0");
        assertFailedNaming(outs.get(1), 2, 8000, "rank 1");
        assertTrue(outs.get(0).error.getMessage().contains("job secret"), outs.get(0).error.getMessage());
        // Rank 2 dials rank 0 first and finds that rank 0 cannot prove rank 2's (wrong) secret.
        assertFailedNaming(outs.get(2), 0, 8000, "rank 2");
        assertTrue(outs.get(2).error.getMessage().contains("authentication"), outs.get(2).error.getMessage());
    }

    @Test
    @Timeout(60)
    void rankThatDiesMidOperationFailsEveryoneFastNamingIt() throws Exception {
        // Op timeout 20 s: survivors must notice the death from the dropped connections, long before it.
        TcpOptions opts = Ranks.fast().withTimeouts(10_000, 20_000).withSizes(Integer.MAX_VALUE - 1024, 4 << 10, 1024);
        List<Ranks.Outcome<Object>> outs = Ranks.runAll(4, opts, Ranks.SECRET, (r, c) -> {
            Tensor t = Tensor.allocateHost(DType.F32, 4 << 20);
            c.allReduce(t, ReduceOp.SUM); // warm: connections in use
            if (r == 3) {
                new Thread(() -> {
                    try {
                        Thread.sleep(30);
                    } catch (InterruptedException ignored) {
                        // exits anyway
                    }
                    c.crashForTest();
                }).start();
            }
            for (int i = 0; i < 50; i++) {
                c.allReduce(t, ReduceOp.SUM);
            }
            return null;
        }, 50);
        for (int r = 0; r < 3; r++) {
            assertFailedNaming(outs.get(r), 3, 15_000, "survivor " + r);
        }
    }

    @Test
    @Timeout(30)
    void stuckPeerTimesOutOnEveryOtherRankAndLaterOpsFailToo() throws Exception {
        TcpOptions opts = Ranks.fast().withTimeouts(5000, 1500);
        List<Ranks.Outcome<Object>> outs = Ranks.runAll(3, opts, Ranks.SECRET, (r, c) -> {
            Tensor t = Tensor.allocateHost(DType.F32, 100);
            if (r == 2) {
                Thread.sleep(4000); // alive, connected, but not taking part
            }
            c.allReduce(t, ReduceOp.SUM);
            return null;
        }, 25);
        assertFailedNaming(outs.get(0), 2, 3800, "rank 0");
        assertFailedNaming(outs.get(1), 2, 3800, "rank 1");
        // The stuck rank's own later operation fails immediately with the propagated cause.
        assertFailedNaming(outs.get(2), 2, 6000, "rank 2");
    }

    @Test
    @Timeout(30)
    void abortUnblocksPendingReceivesEverywhere() throws Exception {
        List<Ranks.Outcome<Object>> outs = Ranks.runAll(3, Ranks.fast(), Ranks.SECRET, (r, c) -> {
            Tensor t = Tensor.allocateHost(DType.F32, 10);
            if (r == 2) {
                Thread.sleep(300);
                c.abort("operator pressed stop");
                c.barrier(); // later operations fail too
                return null;
            }
            c.recv(t, 2, 7); // never sent
            return null;
        }, 20);
        for (int r = 0; r < 3; r++) {
            assertFailedNaming(outs.get(r), 2, 5000, "rank " + r);
            assertTrue(outs.get(r).error.getMessage().contains("operator pressed stop"), outs.get(r).error.getMessage());
        }
    }

    @Test
    @Timeout(30)
    void malformedAndOversizedFramesFromAnAuthenticatedPeerFailTheGroup() throws Exception {
        ByteBuffer badMagic = ByteBuffer.allocate(24).putInt(0x12345678).putInt(1).putInt(0).putInt(0).putLong(4);
        ByteBuffer oversized = ByteBuffer.allocate(24).putInt(Connection.MAGIC).putInt(Connection.DATA).putInt(0)
                .putInt(0).putLong(1L << 40);
        for (ByteBuffer frame : new ByteBuffer[] {badMagic, oversized}) {
            List<Ranks.Outcome<Object>> outs = Ranks.runAll(3, Ranks.fast().withTimeouts(5000, 5000), Ranks.SECRET,
                    (r, c) -> {
                        if (r == 1) {
                            c.writeRawForTest(0, frame.array());
                        }
                        // Small: the direct path, where rank 0 must read rank 1's stream (garbage first).
                        Tensor t = Tensor.allocateHost(DType.F32, 100);
                        for (int i = 0; i < 20; i++) {
                            c.allReduce(t, ReduceOp.SUM);
                        }
                        return null;
                    }, 20);
            for (int r = 0; r < 3; r++) {
                assertFailedNaming(outs.get(r), 1, 4500, "rank " + r);
                assertTrue(outs.get(r).error.getMessage().contains("malformed frame from rank 1"),
                        outs.get(r).error.getMessage());
            }
        }
    }

    /**
     * A frozen peer stops reading: the sender's small sends (written from the caller's own thread) block in
     * the kernel once the socket buffers fill; the watchdog fails the communicator after the op timeout,
     * which closes the socket and unblocks the write.
     */
    @Test
    @Timeout(60)
    void frozenPeerUnblocksASenderStuckInAWrite() throws Exception {
        TcpOptions opts = Ranks.fast().withTimeouts(5000, 1500);
        List<Ranks.Outcome<Object>> outs = Ranks.runAll(2, opts, Ranks.SECRET, (r, c) -> {
            if (r == 1) {
                c.freezeForTest();
                Thread.sleep(3500); // frozen past the 1.5 s op timeout
                return null;
            }
            Thread.sleep(100);
            Tensor t = Tensor.allocateHost(DType.F32, 15_000); // 60 KB: below the inline limit
            for (int i = 0; i < 20_000; i++) { // 1.2 GB: far beyond any socket buffer
                c.isend(t, 1, 0);
            }
            return null;
        }, 40);
        assertFailedNaming(outs.get(0), 1, 5000, "sender");
        assertTrue(outs.get(0).error.getMessage().contains("no progress"), outs.get(0).error.getMessage());
    }
}
