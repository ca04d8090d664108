package org.sparkatron.comm.shm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.Communicators;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.tcp.Data;
import org.sparkatron.comm.tcp.TcpCollectivesTest;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The shared-memory collectives against the same sequential references as the TCP ones, ranks as threads of
 * one JVM. 4 KiB slots and a 1 KiB small-message threshold make every algorithm run many rounds (uneven last
 * rounds, sub-chunks of one element, both slot parities) at sizes that stay cheap.
 */
class ShmCollectivesTest {
    static final byte[] SECRET = "shm-test-secret-0123456789abcdef".getBytes(StandardCharsets.UTF_8);
    private static final DType[] DTYPES = {DType.F32, DType.BF16, DType.F16, DType.I32, DType.I64};
    private static final int[] COUNTS = {0, 1, 7, 1001, 20011};

    static ShmOptions small() {
        return ShmOptions.defaults().withEnabled(true).withSizes(4096, 1024);
    }

    interface Body<T> {
        T run(int rank, Communicator c) throws Exception;
    }

    /** Runs body on n ranks (threads), each connected through {@link Communicators#connect}; results by rank. */
    static <T> List<T> run(int n, ShmOptions shm, long opTimeoutMs, Body<T> body) throws Exception {
        return run(n, r -> shm, opTimeoutMs, body);
    }

    /** As {@link #run(int, ShmOptions, long, Body)} with each rank's own options (another directory: another host). */
    static <T> List<T> run(int n, java.util.function.IntFunction<ShmOptions> shmOf, long opTimeoutMs, Body<T> body)
            throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(n, 20_000);
        TcpOptions tcp = TcpOptions.loopback().withTimeouts(20_000, opTimeoutMs);
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (Communicator c = Communicators.connect(rank, n, rv.forRank(rank), SECRET, tcp, shmOf.apply(rank))) {
                        try {
                            return body.run(rank, c);
                        } catch (Throwable t) {
                            c.abort("rank " + rank + " failed: " + t);
                            throw t;
                        }
                    }
                }));
            }
            List<T> out = new ArrayList<>();
            Throwable first = null;
            for (Future<T> f : fs) {
                try {
                    out.add(f.get(120, TimeUnit.SECONDS));
                } catch (ExecutionException e) {
                    // The root cause, not the CommExceptions it caused on the other ranks.
                    if (first == null || first instanceof CommException && !(e.getCause() instanceof CommException)) {
                        first = e.getCause();
                    }
                }
            }
            if (first != null) {
                throw first instanceof Exception x ? x : new RuntimeException(first);
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    @ParameterizedTest(name = "group of {0}")
    @ValueSource(ints = {2, 3, 5})
    @Timeout(120)
    void everyOpEveryDtypeSmallAndOddSizes(int n) throws Exception {
        run(n, small(), 30_000, (r, c) -> {
            assertTrue(((ShmCommunicator) c).sharedMemory(), "ranks of one JVM share a host");
            int seed = 0;
            for (DType dt : DTYPES) {
                for (int count : COUNTS) {
                    TcpCollectivesTest.exerciseAll(c, dt, count, ++seed);
                }
            }
            return null;
        });
    }

    /**
     * Two hosts emulated by two shared-memory directories (ranks 0, 1 see one, ranks 2, 3 the other, as two
     * machines' {@code /dev/shm}s): the world all-reduces in two levels ({@link HostHierarchy}), every op and
     * dtype still against the sequential references, large enough for the hierarchy and small enough for the flat
     * exchange; a sub-group across the hosts (ranks 1, 2, 3: one alone on its host) too; and the result is the
     * same bits on every rank.
     */
    @Test
    @Timeout(120)
    void acrossTwoHostsAllReduceInTwoLevels(@org.junit.jupiter.api.io.TempDir Path tmp) throws Exception {
        Path hostA = Files.createDirectory(tmp.resolve("host-a"));
        Path hostB = Files.createDirectory(tmp.resolve("host-b"));
        int big = Math.toIntExact(HostHierarchy.MIN_BYTES / 2 + 3); // >= MIN_BYTES for every dtype of 2 bytes or more
        List<long[]> sums = run(4, r -> small().withDir(r < 2 ? hostA : hostB), 30_000, (r, c) -> {
            ShmCommunicator s = (ShmCommunicator) c;
            assertFalse(s.sharedMemory(), "the world spans two hosts");
            assertTrue(s.toString().contains("TCP between hosts"), s.toString());
            int seed = 100;
            for (DType dt : DTYPES) {
                for (int count : new int[] {0, 7, big}) {
                    TcpCollectivesTest.exerciseAll(c, dt, count, ++seed);
                }
            }
            // two hosts pipeline in chunks of at least 1 MiB: 3 uneven ones here
            TcpCollectivesTest.exerciseAll(c, DType.F32, (3 << 20) / 4 + 5, ++seed);
            TcpCollectivesTest.exerciseAll(c, DType.BF16, (3 << 20) / 2 + 3, ++seed);
            // reduce-scatter and all-gather through pairs of ranks (2 + 2), 3 chunks of 1 MiB a pair over the link
            TcpCollectivesTest.exerciseAll(c, DType.F32, (3 << 20) / 8 + 5, ++seed);
            // from 16 MiB on, chunks ramp up and down (HostHierarchy.RAMP): 11 of them here, the ends 248 KiB
            int ramped = Math.toIntExact(HostHierarchy.RAMP_MIN_BYTES / 4 + 5);
            for (ReduceOp op : new ReduceOp[] {ReduceOp.SUM, ReduceOp.MAX}) {
                Tensor t = Data.fill(DType.F32, ramped, r, 0, ++seed);
                c.allReduce(t, op);
                int sd = seed;
                Data.check(t, 0, i -> Data.reduce(DType.F32, op, 4, i, sd), "ramped all-reduce " + op + " rank " + r);
            }
            Communicator across = r == 0 ? null : c.subGroup(7, new int[] {1, 2, 3});
            if (across != null) {
                assertTrue(across.toString().contains("TCP between hosts"), across.toString());
                TcpCollectivesTest.exerciseAll(across, DType.F32, big, ++seed);
                across.close();
            }
            Tensor t = Tensor.allocateHost(DType.F32, big);
            Random rng = new Random(r);
            for (int i = 0; i < big; i++) {
                t.hostBuffer().putFloat(4 * i, (float) rng.nextGaussian());
            }
            c.allReduce(t, ReduceOp.SUM);
            long[] bits = new long[1];
            for (int i = 0; i < big; i++) {
                bits[0] = bits[0] * 31 + Float.floatToRawIntBits(t.hostBuffer().getFloat(4 * i));
            }
            return bits;
        });
        for (long[] b : sums) {
            assertEquals(sums.get(0)[0], b[0], "the two-level all-reduce gave different bits on different ranks");
        }
    }

    /** Hosts holding every other rank (Spark places barrier tasks as it likes): pairs are 0-1, 2-3, 4-5. */
    @Test
    @Timeout(120)
    void acrossTwoHostsInterleavedReduceScatterAndAllGatherInPairs(@org.junit.jupiter.api.io.TempDir Path tmp)
            throws Exception {
        Path hostA = Files.createDirectory(tmp.resolve("host-a"));
        Path hostB = Files.createDirectory(tmp.resolve("host-b"));
        run(6, r -> small().withDir(r % 2 == 0 ? hostA : hostB), 30_000, (r, c) -> {
            assertTrue(c.toString().contains("paired with rank " + (r ^ 1)), c.toString());
            int seed = 500;
            for (DType dt : new DType[] {DType.F32, DType.BF16, DType.I64}) {
                TcpCollectivesTest.exerciseAll(c, dt, (3 << 20) / 6 / dt.bytes() + 1, ++seed);
            }
            Communicator uneven = r == 5 ? null : c.subGroup(9, new int[] {0, 1, 2, 3, 4}); // 3 + 2: no pairs
            if (uneven != null) {
                assertFalse(uneven.toString().contains("paired"), uneven.toString());
                TcpCollectivesTest.exerciseAll(uneven, DType.F32, (1 << 20) / 5 + 1, ++seed);
                uneven.close();
            }
            return null;
        });
    }

    @Test
    void twoHostChunksCoverTheTensorAndRampAtTheEnds() {
        for (long n : new long[] {0, 1, 7, 262_144, (3 << 20) / 4 + 5, (16 << 20) / 4, (64 << 20) / 4 + 3}) {
            long bytes = 4 * n;
            long[] at = HostHierarchy.chunkBounds(n, bytes);
            assertEquals(0, at[0]);
            assertEquals(n, at[at.length - 1]);
            for (int c = 0; c + 1 < at.length; c++) {
                assertTrue(at[c] <= at[c + 1], "bounds in order at " + c + " for " + n);
                assertTrue(n == 0 || at[c] < at[c + 1], "no empty chunk at " + c + " for " + n);
            }
            if (bytes >= HostHierarchy.RAMP_MIN_BYTES) {
                int last = at.length - 2;
                long middle = at[at.length / 2 + 1] - at[at.length / 2];
                assertTrue(at[1] - at[0] <= middle / 8 + 1 && at[last + 1] - at[last] <= middle / 8 + 1,
                        "small first and last chunks for " + n + ": " + Arrays.toString(at));
                assertTrue(4 * (at[1] - at[0]) >= (248 << 10), "the smallest chunk is 248 KiB or more for " + n);
            } else {
                assertTrue(at.length - 1 <= HostHierarchy.CHUNKS && (at.length == 2 || 4 * (at[1] - at[0]) >= (1 << 20) - 4),
                        "up to " + HostHierarchy.CHUNKS + " even chunks of 1 MiB or more: " + Arrays.toString(at));
            }
        }
    }

    /** The path of ranks in separate processes (staging through the segment), here with threads. */
    @ParameterizedTest(name = "group of {0}")
    @ValueSource(ints = {2, 4})
    @Timeout(120)
    void everyOpStagedThroughTheSegment(int n) throws Exception {
        run(n, small().withDirect(false), 30_000, (r, c) -> {
            assertTrue(((ShmCommunicator) c).sharedMemory(), "ranks of one JVM share a host");
            int seed = 0;
            for (DType dt : DTYPES) {
                for (int count : COUNTS) {
                    TcpCollectivesTest.exerciseAll(c, dt, count, ++seed);
                }
            }
            return null;
        });
    }

    @ParameterizedTest(name = "group of {0}")
    @ValueSource(ints = {2, 4})
    @Timeout(120)
    void severalMegabytesWithDefaultSlots(int n) throws Exception {
        run(n, ShmOptions.defaults().withEnabled(true), 30_000, (r, c) -> {
            TcpCollectivesTest.exerciseAll(c, DType.F32, 786_433, 101);
            TcpCollectivesTest.exerciseAll(c, DType.BF16, 786_433, 102);
            return null;
        });
        run(n, ShmOptions.defaults().withEnabled(true).withDirect(false), 30_000, (r, c) -> {
            TcpCollectivesTest.exerciseAll(c, DType.F32, 786_433, 103);
            return null;
        });
    }

    @Test
    @Timeout(60)
    void randomFloatsAgreeBitwiseAcrossRanksAndWithinToleranceOfDoubleSum() throws Exception {
        int n = 4;
        int count = 100_003;
        List<float[]> results = run(n, small(), 30_000, (r, c) -> {
            Tensor t = Tensor.allocateHost(DType.F32, count);
            Random rnd = new Random(r);
            for (int i = 0; i < count; i++) {
                t.floats().put(i, (float) rnd.nextGaussian());
            }
            c.allReduce(t, ReduceOp.SUM);
            float[] out = new float[count];
            t.floats().get(out);
            return out;
        });
        double[] exact = new double[count];
        double[] mag = new double[count];
        for (int r = 0; r < n; r++) {
            Random rnd = new Random(r);
            for (int i = 0; i < count; i++) {
                float v = (float) rnd.nextGaussian();
                exact[i] += v;
                mag[i] += Math.abs(v);
            }
        }
        for (int i = 0; i < count; i++) {
            // n-1 = 3 fp32 roundings of partial sums, each at most 2^-24 relative to the running magnitude.
            assertEquals(exact[i], results.get(0)[i], 3 * 0x1p-24 * mag[i] + 1e-30, "element " + i);
        }
        for (int r = 1; r < n; r++) {
            assertArrayEquals(results.get(0), results.get(r), "rank " + r);
        }
    }

    /**
     * The staged all-reduce (ranks as processes) reduces every element once, by the rank that owns its part of
     * its round, in rank order starting from that rank: the bits are pinned (the same as before the rounds were
     * pipelined), over several rounds, parts of unequal length and a short last round.
     */
    @ParameterizedTest(name = "group of {0}")
    @ValueSource(ints = {2, 3, 4})
    @Timeout(60)
    void stagedAllReduceReducesEachElementOnceInAFixedOrder(int n) throws Exception {
        ShmOptions opts = small().withDirect(false);
        int count = 5 * 1024 + 77;
        List<float[]> results = run(n, opts, 30_000, (r, c) -> {
            Tensor t = Tensor.allocateHost(DType.F32, count);
            t.floats().put(gaussians(r, count));
            c.allReduce(t, ReduceOp.SUM);
            float[] out = new float[count];
            t.floats().get(out);
            return out;
        });
        float[][] x = new float[n][];
        for (int r = 0; r < n; r++) {
            x[r] = gaussians(r, count);
        }
        float[] expected = new float[count];
        int perRound = Math.max(n, opts.slotBytes / 4);
        for (int lo = 0; lo < count; lo += perRound) {
            int[] off = ShmCollectives.parts(Math.min(perRound, count - lo), n, 4);
            for (int q = 0; q < n; q++) {
                for (int i = lo + off[q] / 4; i < lo + off[q + 1] / 4; i++) {
                    float acc = x[q][i];
                    for (int j = 1; j < n; j++) {
                        acc += x[(q + j) % n][i];
                    }
                    expected[i] = acc;
                }
            }
        }
        for (int r = 0; r < n; r++) {
            assertArrayEquals(expected, results.get(r), "rank " + r);
        }
    }

    private static float[] gaussians(int seed, int count) {
        Random rnd = new Random(1000 + seed);
        float[] v = new float[count];
        for (int i = 0; i < count; i++) {
            v[i] = (float) rnd.nextGaussian();
        }
        return v;
    }

    @Test
    @Timeout(60)
    void mismatchedCollectivesFailOnEveryRankWithTheSameMessageAndTheGroupStaysUsable() throws Exception {
        List<String> errors = run(3, small(), 30_000, (r, c) -> {
            String error = null;
            try {
                c.allReduce(Tensor.allocateHost(DType.F32, r == 1 ? 5000 : 4000), ReduceOp.SUM);
            } catch (IllegalArgumentException e) {
                error = e.getMessage();
            }
            try {
                int[] send = {1, 1, 1};
                int[] recv = {r == 2 ? 2 : 1, 1, 1};
                c.allToAll(Tensor.allocateHost(DType.F32, 3), send, Tensor.allocateHost(DType.F32, r == 2 ? 4 : 3), recv);
                error += " | no allToAll error";
            } catch (IllegalArgumentException e) {
                error += " | " + e.getMessage();
            }
            Tensor t = Data.fill(DType.F32, 3000, r, 0, 1);
            c.allReduce(t, ReduceOp.SUM);
            Data.check(t, 0, i -> Data.reduce(DType.F32, ReduceOp.SUM, 3, i, 1), "after the errors");
            return error;
        });
        for (String e : errors) {
            assertEquals(errors.get(0), e);
        }
        assertTrue(errors.get(0).contains("rank 1 allReduce SUM of 5000 F32 elements"), errors.get(0));
        assertTrue(errors.get(0).contains("rank 2 expects 2 elements from rank 0, which sends it 1"), errors.get(0));
    }

    @Test
    @Timeout(60)
    void aRankThatNeverArrivesFailsTheOthersNamingIt() throws Exception {
        long start = System.nanoTime();
        List<String> outcomes = run(3, small(), 3_000, (r, c) -> {
            try {
                c.barrier(); // sets the segment up (over TCP)
                if (r != 2) {
                    c.allReduce(Tensor.allocateHost(DType.F32, 100_000), ReduceOp.SUM);
                } else {
                    Thread.sleep(8_000);
                    c.barrier();
                }
                return "ok";
            } catch (CommException e) {
                return "peer " + e.peer() + ": " + e.getMessage();
            }
        });
        long ms = (System.nanoTime() - start) / 1_000_000L;
        assertTrue(outcomes.get(0).startsWith("peer 2: "), outcomes.get(0));
        assertTrue(outcomes.get(0).contains("waiting in shared memory for rank 2"), outcomes.get(0));
        assertTrue(outcomes.get(1).startsWith("peer 2: "), outcomes.get(1));
        assertTrue(outcomes.get(2).startsWith("peer 2: "), "the late rank finds its world failed: " + outcomes.get(2));
        assertTrue(ms < 30_000, "took " + ms + " ms");
    }

    @Test
    @Timeout(60)
    void abortOnOneRankFreesTheOthersWaitingInSharedMemory() throws Exception {
        List<String> outcomes = run(3, small(), 30_000, (r, c) -> {
            try {
                c.barrier();
                if (r == 1) {
                    Thread.sleep(300);
                    c.abort("rank 1 gives up");
                    return "aborted";
                }
                c.allReduce(Tensor.allocateHost(DType.F32, 100_000), ReduceOp.SUM);
                return "ok";
            } catch (CommException e) {
                return e.getMessage();
            }
        });
        assertTrue(outcomes.get(0).contains("rank 1 gives up"), outcomes.get(0));
        assertTrue(outcomes.get(2).contains("rank 1 gives up"), outcomes.get(2));
    }

    @Test
    @Timeout(60)
    void withoutAUsableDirectoryTheWorldStaysOnTcp(@org.junit.jupiter.api.io.TempDir Path tmp) throws Exception {
        Path missing = tmp.resolve("no-such-dir");
        run(2, small().withDir(missing), 30_000, (r, c) -> {
            assertFalse(((ShmCommunicator) c).sharedMemory());
            TcpCollectivesTest.exerciseAll(c, DType.F32, 1001, 3);
            return null;
        });
        run(2, small().withEnabled(false), 30_000, (r, c) -> {
            assertFalse(c instanceof ShmCommunicator, "switched off: the plain TCP communicator");
            return null;
        });
    }

    @Test
    @Timeout(60)
    void segmentsAreUnlinkedOnceMapped(@org.junit.jupiter.api.io.TempDir Path tmp) throws Exception {
        run(3, small().withDir(tmp), 30_000, (r, c) -> {
            Tensor t = Data.fill(DType.F32, 5000, r, 0, 2);
            c.allReduce(t, ReduceOp.SUM);
            if (r != 1) {
                c.subGroup(7, new int[] {0, 2}).allReduce(t, ReduceOp.MAX);
            }
            c.barrier();
            return null;
        });
        try (var files = Files.list(tmp)) {
            assertEquals(List.of(), files.toList(), "nothing left behind");
        }
    }
}
