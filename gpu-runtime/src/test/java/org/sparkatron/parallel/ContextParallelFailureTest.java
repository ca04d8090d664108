package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Request;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.Trainer;

/**
 * A CP peer that dies in the middle of the ring fails every other rank of the group within the communicator's
 * timeout, never a hang: CP 4 ranks as threads with loopback TCP communicators (operation timeout 3 s) train one
 * step together, then rank 2 dies at its second forward send of the next step's ring, either frozen (it stops
 * taking part, its sockets open: the others must time out) or crashed (its communicator closes, as a killed
 * process's sockets do: the others must fail at once). Bounds allow generous slack above the timeout for a
 * loaded machine; what they rule out is the 20-plus seconds of a hang.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class ContextParallelFailureTest {
    private static final byte[] SECRET = "cp-failure-test-secret-0123456789".getBytes(StandardCharsets.UTF_8);
    private static final int CP = 4;
    private static final int DYING = 2;
    private static final long OP_TIMEOUT_MS = 3000;

    /** What a surviving rank saw in the step its peer died in. */
    record Outcome(Throwable error, long elapsedMs) {
    }

    @ParameterizedTest(name = "{0} peer, {1}")
    @CsvSource({"frozen, p2p", "crashed, p2p", "frozen, all_gather"})
    void aDeadPeerFailsEveryRankWithinTheTimeout(String how, String mode) throws Exception {
        boolean frozen = how.equals("frozen");
        ModelConfig cfg = ContextParallelRun.config("llama", 2);
        ContextParallelRun.Setup setup = ContextParallelRun.Setup.of(1, CP, mode, 1, 1, false);
        InProcessRendezvous rv = new InProcessRendezvous(CP, 20_000);
        TcpOptions opts = TcpOptions.loopback().withTimeouts(20_000, OP_TIMEOUT_MS);
        CountDownLatch release = new CountDownLatch(1);
        ExecutorService pool = Executors.newFixedThreadPool(CP);
        List<Future<Outcome>> fs = new ArrayList<>();
        try {
            for (int r = 0; r < CP; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (TcpCommunicator world = TcpCommunicator.create(rank, CP, rv.forRank(rank), SECRET, opts)) {
                        return rank(rank, world, cfg, setup, frozen, release);
                    }
                }));
            }
            for (int r = 0; r < CP; r++) {
                if (r == DYING) {
                    continue;
                }
                Outcome o = fs.get(r).get(60, TimeUnit.SECONDS);
                String at = how + " peer, " + mode + ", rank " + r;
                assertNotNull(o.error(), at + ": the step the peer died in completed");
                assertTrue(causedByCommException(o.error()), at + ": " + o.error());
                long bound = frozen ? OP_TIMEOUT_MS + 12_000 : 12_000;
                assertTrue(o.elapsedMs() < bound, at + ": failed after " + o.elapsedMs() + " ms (bound " + bound + ")");
            }
        } finally {
            release.countDown();
            pool.shutdown();
            assertTrue(pool.awaitTermination(60, TimeUnit.SECONDS), "the dead rank's thread ended");
        }
        assertEquals(true, fs.get(DYING).isDone());
    }

    private static boolean causedByCommException(Throwable t) {
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (c instanceof CommException) {
                return true;
            }
        }
        return false;
    }

    private static Outcome rank(int rank, TcpCommunicator world, ModelConfig cfg, ContextParallelRun.Setup s, boolean frozen,
                                CountDownLatch release) {
        ParallelLayout layout = ParallelLayout.forWorld(CP, 1, CP, 1, 1, 1);
        try (ProcessGroups pg = ProcessGroups.create(layout, world)) {
            AtomicBoolean armed = new AtomicBoolean();
            Communicator cp = rank == DYING ? new Dying(pg.cp(), armed, frozen, world, release) : pg.cp();
            RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), false), Precision.FP32)
                    .withContextParallel(new ContextParallel(cp, s.mode()));
            Transformer m = new Transformer(cfg, ctx);
            try {
                m.initialize(ParityRun.SEED);
                Trainer tr = new Trainer(m, ContextParallelRun.source(cfg, 0, 1, s.batch()), ParityRun.options(s.batch()),
                        ParityRun.averaging(pg.dpWithCp()));
                tr.step(); // all ranks alive
                armed.set(true);
                long t0 = System.nanoTime();
                try {
                    tr.step();
                    return new Outcome(null, (System.nanoTime() - t0) / 1_000_000);
                } catch (RuntimeException e) {
                    world.abort("rank " + rank + " failed: " + e); // as a failing Spark task's rank does
                    return new Outcome(e, (System.nanoTime() - t0) / 1_000_000);
                }
            } finally {
                m.close();
            }
        }
    }

    /** The dying rank's CP group: passes everything on until, armed, its second forward send of the ring. */
    private static final class Dying implements Communicator {
        private final Communicator inner;
        private final AtomicBoolean armed;
        private final boolean frozen;
        private final TcpCommunicator world;
        private final CountDownLatch release;
        private int sends;

        Dying(Communicator inner, AtomicBoolean armed, boolean frozen, TcpCommunicator world, CountDownLatch release) {
            this.inner = inner;
            this.armed = armed;
            this.frozen = frozen;
            this.world = world;
            this.release = release;
        }

        private void maybeDie() {
            if (!armed.get() || ++sends < 2) {
                return;
            }
            if (frozen) {
                try {
                    release.await(); // alive to the OS, silent to its peers
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            } else {
                world.close(); // a killed process: its sockets close
            }
            throw new IllegalStateException("rank " + DYING + " died");
        }

        @Override
        public Request isend(Tensor t, int peer, int tag) {
            maybeDie();
            return inner.isend(t, peer, tag);
        }

        @Override
        public void allGather(Tensor in, Tensor out) {
            maybeDie();
            inner.allGather(in, out);
        }

        @Override
        public void reduceScatter(Tensor in, Tensor out, ReduceOp op) {
            inner.reduceScatter(in, out, op);
        }

        @Override
        public int rank() {
            return inner.rank();
        }

        @Override
        public int size() {
            return inner.size();
        }

        @Override
        public void allReduce(Tensor t, ReduceOp op) {
            inner.allReduce(t, op);
        }

        @Override
        public void allGatherV(Tensor in, Tensor out, int[] counts) {
            inner.allGatherV(in, out, counts);
        }

        @Override
        public void broadcast(Tensor t, int root) {
            inner.broadcast(t, root);
        }

        @Override
        public void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts) {
            inner.allToAll(in, sendCounts, out, recvCounts);
        }

        @Override
        public Request irecv(Tensor t, int peer, int tag) {
            return inner.irecv(t, peer, tag);
        }

        @Override
        public void barrier() {
            inner.barrier();
        }

        @Override
        public void abort(String reason) {
            inner.abort(reason);
        }

        @Override
        public Communicator subGroup(int groupId, int[] ranks) {
            return inner.subGroup(groupId, ranks);
        }

        @Override
        public void close() {
            inner.close();
        }
    }
}
