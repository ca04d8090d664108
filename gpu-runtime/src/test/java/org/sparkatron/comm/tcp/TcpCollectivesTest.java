package org.sparkatron.comm.tcp;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Every collective against a sequential reference, ranks as threads of one JVM. Small 16 KiB segments and
 * a 32 KiB small-message threshold make the ring paths (several segments per chunk, uneven chunks) run at
 * sizes that stay cheap; sizes 0, 1 and odd ones take the direct paths and the edge cases.
 */
public class TcpCollectivesTest {
    private static final DType[] DTYPES = {DType.F32, DType.BF16, DType.F16, DType.I32, DType.I64};
    private static final int[] COUNTS = {0, 1, 7, 1001, 20011};
    private static final int BIG = 786_433; // 3 MiB + 4 bytes of F32: odd, several segments, ring path

    static TcpOptions opts() {
        return Ranks.fast().withSizes(Integer.MAX_VALUE - 1024, 16 << 10, 32 << 10);
    }

    @ParameterizedTest(name = "group of {0}")
    @ValueSource(ints = {1, 2, 3, 4, 5, 6, 7, 8})
    @Timeout(120)
    void everyOpEveryDtypeSmallAndOddSizes(int n) throws Exception {
        Ranks.run(n, opts(), (r, c) -> {
            int seed = 0;
            for (DType dt : DTYPES) {
                for (int count : COUNTS) {
                    exerciseAll(c, dt, count, ++seed);
                }
            }
            return null;
        });
    }

    @ParameterizedTest(name = "group of {0}")
    @ValueSource(ints = {2, 3, 4, 8})
    @Timeout(120)
    void severalMegabytes(int n) throws Exception {
        Ranks.run(n, opts(), (r, c) -> {
            exerciseAll(c, DType.F32, BIG, 101);
            if (n <= 4) {
                exerciseAll(c, DType.BF16, BIG, 102);
                exerciseAll(c, DType.I64, BIG / 2, 103);
            }
            return null;
        });
    }

    /** Runs every collective once on (dtype, count) and checks the result on this rank. */
    public static void exerciseAll(Communicator c, DType dt, int count, int seed) {
        int n = c.size();
        int r = c.rank();
        String at = dt + " count " + count + " rank " + r + "/" + n;
        for (ReduceOp op : ReduceOp.values()) {
            Tensor t = Data.fill(dt, count, r, 0, seed);
            c.allReduce(t, op);
            Data.check(t, 0, i -> Data.reduce(dt, op, n, i, seed), "allReduce " + op + " " + at);
        }
        // reduce-scatter: input of n blocks of count elements; rank r gets block r.
        for (ReduceOp op : new ReduceOp[] {ReduceOp.SUM, ReduceOp.MAX, ReduceOp.AVG}) {
            Tensor in = Data.fill(dt, n * count, r, 0, seed);
            Tensor out = Tensor.allocateHost(dt, count);
            c.reduceScatter(in, out, op);
            Data.check(out, (long) r * count, i -> Data.reduce(dt, op, n, i, seed), "reduceScatter " + op + " " + at);
            Data.check(in, 0, i -> Data.value(dt, r, i, seed), "reduceScatter input untouched " + at);
        }
        // in place (Megatron's distributed optimizer): out is this rank's block of in; other blocks are scratch.
        for (ReduceOp op : new ReduceOp[] {ReduceOp.SUM, ReduceOp.AVG}) {
            Tensor inOut = Data.fill(dt, n * count, r, 0, seed);
            Tensor mine = inOut.slice((long) r * count, count);
            c.reduceScatter(inOut, mine, op);
            Data.check(mine, (long) r * count, i -> Data.reduce(dt, op, n, i, seed), "reduceScatter in place " + op + " " + at);
        }
        // all-gather in place: this rank's input is its block of the output.
        Tensor gathered = Data.fill(dt, n * count, r, 0, seed);
        c.allGather(gathered.slice((long) r * count, count), gathered);
        Data.check(gathered, 0, i -> Data.value(dt, (int) (i / Math.max(1, count)), i, seed), "allGather in place " + at);
        // all-gather: rank q contributes elements [q*count, (q+1)*count) of the global index space.
        Tensor in = Data.fill(dt, count, r, (long) r * count, seed);
        Tensor out = Tensor.allocateHost(dt, n * count);
        c.allGather(in, out);
        Data.check(out, 0, i -> Data.value(dt, (int) (i / Math.max(1, count)), i, seed), "allGather " + at);
        // uneven all-gather with zero counts.
        int[] counts = new int[n];
        long[] first = new long[n + 1];
        for (int q = 0; q < n; q++) {
            counts[q] = q % 3 == 1 ? 0 : count + q;
            first[q + 1] = first[q] + counts[q];
        }
        Tensor vin = Data.fill(dt, counts[r], r, first[r], seed);
        Tensor vout = Tensor.allocateHost(dt, Math.toIntExact(first[n]));
        c.allGatherV(vin, vout, counts);
        Data.check(vout, 0, i -> Data.value(dt, owner(first, i), i, seed), "allGatherV " + at);
        // broadcast from the last rank and from rank 0.
        for (int root : new int[] {n - 1, 0}) {
            Tensor b = Data.fill(dt, count, r, 0, seed + root);
            c.broadcast(b, root);
            Data.check(b, 0, i -> Data.value(dt, root, i, seed + root), "broadcast root " + root + " " + at);
        }
        // uneven all-to-all: rank s sends f(s, d) elements to rank d, valued value(s, d * 1_000_000 + k).
        int[] send = new int[n];
        int[] recv = new int[n];
        for (int p = 0; p < n; p++) {
            send[p] = split(r, p, count);
            recv[p] = split(p, r, count);
        }
        Tensor ain = Tensor.allocateHost(dt, Arrays.stream(send).sum());
        ByteBuffer ab = ain.hostBuffer();
        for (int p = 0, k = 0; p < n; p++) {
            for (int j = 0; j < send[p]; j++, k++) {
                Data.put(ab, dt, k, Data.value(dt, r, p * 1_000_000L + j, seed));
            }
        }
        Tensor aout = Tensor.allocateHost(dt, Arrays.stream(recv).sum());
        c.allToAll(ain, send, aout, recv);
        ByteBuffer ob = aout.hostBuffer();
        for (int p = 0, k = 0; p < n; p++) {
            for (int j = 0; j < recv[p]; j++, k++) {
                double want = Data.value(dt, p, r * 1_000_000L + j, seed);
                if (Data.get(ob, dt, k) != want) {
                    throw new AssertionError("allToAll " + at + ": from rank " + p + " element " + j + " is "
                            + Data.get(ob, dt, k) + ", expected " + want);
                }
            }
        }
        c.barrier();
    }

    private static int split(int src, int dst, int count) {
        return ((src + 2 * dst) % 3) * (count / 3) + (src + dst) % 2;
    }

    private static int owner(long[] first, long i) {
        int q = 0;
        while (first[q + 1] <= i) {
            q++;
        }
        return q;
    }

    @Test
    @Timeout(60)
    void randomFloatsAgreeBitwiseAcrossRanksAndWithinToleranceOfDoubleSum() throws Exception {
        int n = 4;
        int count = 100_003;
        List<float[]> results = Ranks.run(n, opts(), (r, c) -> {
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
            // All-reduce results must be bitwise identical on every rank (DP replicas must not drift).
            org.junit.jupiter.api.Assertions.assertArrayEquals(results.get(0), results.get(r), "rank " + r);
        }
    }

    @Test
    @Timeout(60)
    void mismatchedSizesFailWithAClearErrorInsteadOfHanging() throws Exception {
        int n = 2;
        List<Ranks.Outcome<Object>> outs = Ranks.runAll(n, Ranks.fast(), Ranks.SECRET, (r, c) -> {
            c.allReduce(Tensor.allocateHost(DType.F32, r == 0 ? 10 : 11), ReduceOp.SUM);
            return null;
        }, 30);
        for (Ranks.Outcome<Object> o : outs) {
            assertEquals(CommException.class, o.error == null ? null : o.error.getClass(), "outcome " + o.error);
        }
        List<Ranks.Outcome<Object>> single = Ranks.runAll(1, Ranks.fast(), Ranks.SECRET, (r, c) -> {
            c.reduceScatter(Tensor.allocateHost(DType.F32, 3), Tensor.allocateHost(DType.F32, 2), ReduceOp.SUM);
            return null;
        }, 30);
        assertEquals(IllegalArgumentException.class, single.get(0).error.getClass());
        org.junit.jupiter.api.Assertions.assertTrue(single.get(0).error.getMessage().contains("3 elements, expected 2"),
                single.get(0).error.getMessage());
    }

    @Test
    @Timeout(60)
    void manyPointToPointMessagesInFlightBothWays() throws Exception {
        int n = 4;
        int perPeer = 60;
        Ranks.run(n, opts(), (r, c) -> {
            List<org.sparkatron.comm.Request> sends = new ArrayList<>();
            // Every send is posted before any receive: sends must not wait for receivers.
            for (int k = 0; k < perPeer; k++) {
                for (int p = 0; p < n; p++) {
                    if (p != r) {
                        int size = msgSize(r, p, k);
                        sends.add(c.isend(Data.fill(DType.I32, size, r, p * 10_000_000L + k * 100_000L, 0), p, k % 5));
                    }
                }
            }
            // Receive in a different order than sent: tags in reverse, FIFO within a tag.
            List<Tensor> got = new ArrayList<>();
            List<org.sparkatron.comm.Request> recvs = new ArrayList<>();
            List<int[]> which = new ArrayList<>();
            for (int tag = 4; tag >= 0; tag--) {
                for (int k = tag; k < perPeer; k += 5) {
                    for (int p = n - 1; p >= 0; p--) {
                        if (p != r) {
                            Tensor t = Tensor.allocateHost(DType.I32, msgSize(p, r, k));
                            recvs.add(c.irecv(t, p, tag));
                            got.add(t);
                            which.add(new int[] {p, k});
                        }
                    }
                }
            }
            for (org.sparkatron.comm.Request q : recvs) {
                q.await();
            }
            for (int j = 0; j < got.size(); j++) {
                int p = which.get(j)[0];
                int k = which.get(j)[1];
                Data.check(got.get(j), r * 10_000_000L + k * 100_000L, i -> Data.value(DType.I32, p, i, 0),
                        "p2p from " + p + " #" + k);
            }
            for (org.sparkatron.comm.Request q : sends) {
                q.await();
            }
            return null;
        });
    }

    private static int msgSize(int src, int dst, int k) {
        return k == 7 ? 300_001 : (src * 37 + dst * 11 + k * 101) % 3000;
    }
}
