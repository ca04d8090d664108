package org.sparkatron.comm.nccl;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.cuda.CudaDevice;
import org.sparkatron.device.cuda.CudaRuntime;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The NCCL communicator: every operation with ranks as threads, each on its own CUDA device (the emulated
 * CUDA has two; NCCL refuses two ranks on one GPU, so on a one-GPU machine only the one-rank test runs).
 * Results are exact: every value is a small integer in float, so sums, maxima and averages have one
 * correct answer whatever the reduction order.
 */
@Tag("cuda")
class NcclCommunicatorTest {
    interface Body {
        void run(int rank, CudaDevice dev, NcclCommunicator comm) throws Exception;
    }

    /** Skips the test (saying why) unless n CUDA devices are usable. */
    static void requireDevices(int n) {
        CudaRuntime.Availability a = CudaRuntime.availability();
        if (!a.available()) {
            System.err.println("NCCL tests SKIPPED: " + a.reason());
        }
        Assumptions.assumeTrue(a.available(), () -> "CUDA unavailable: " + a.reason());
        Assumptions.assumeTrue(a.deviceCount() >= n, () -> n + " ranks need " + n + " CUDA devices, found " + a.deviceCount());
    }

    static void ranks(int n, Duration timeout, Body body) throws Exception {
        requireDevices(n);
        InProcessRendezvous rv = new InProcessRendezvous(n, 30_000);
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<Object>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (CudaDevice dev = new CudaDevice(rank); NcclCommunicator c = NcclCommunicator.create(dev, rv.forRank(rank), timeout)) {
                        body.run(rank, dev, c);
                    }
                    return null;
                }));
            }
            for (Future<Object> f : fs) {
                try {
                    f.get(120, TimeUnit.SECONDS);
                } catch (java.util.concurrent.ExecutionException e) {
                    if (e.getCause() instanceof Exception ex) {
                        throw ex;
                    }
                    throw e;
                }
            }
        } finally {
            pool.shutdownNow();
        }
    }

    static Tensor put(CudaDevice dev, float... v) {
        Tensor t = dev.allocate(MemoryKind.WORKSPACE, DType.F32, v.length);
        ByteBuffer b = ByteBuffer.allocateDirect(4 * v.length).order(ByteOrder.nativeOrder());
        b.asFloatBuffer().put(v);
        dev.upload(t, b);
        return t;
    }

    static float[] get(CudaDevice dev, Tensor t) {
        ByteBuffer b = ByteBuffer.allocateDirect((int) t.byteSize()).order(ByteOrder.nativeOrder());
        dev.download(b, t);
        float[] v = new float[(int) t.numel()];
        b.asFloatBuffer().get(v);
        return v;
    }

    @Test
    void versionIsCheckedAndOneRankWorks() throws Exception {
        ranks(1, Duration.ofSeconds(60), (rank, dev, c) -> {
            assertTrue(NcclCommunicator.version() >= NcclCommunicator.MIN_VERSION);
            Tensor t = put(dev, 1, 2, 3);
            c.allReduce(t, ReduceOp.SUM);
            Tensor out = dev.allocate(MemoryKind.WORKSPACE, DType.F32, 3);
            c.allGather(t, out);
            c.broadcast(t, 0);
            assertArrayEquals(new float[] {1, 2, 3}, get(dev, out));
            c.barrier();
        });
    }

    @Test
    void collectivesOnTwoRanks() throws Exception {
        ranks(2, Duration.ofSeconds(60), (rank, dev, c) -> {
            float r = rank;
            Tensor t = put(dev, 1 + r, 10 * r, -r);
            c.allReduce(t, ReduceOp.SUM);
            assertArrayEquals(new float[] {3, 10, -1}, get(dev, t));
            Tensor m = put(dev, r, -r);
            c.allReduce(m, ReduceOp.MAX);
            assertArrayEquals(new float[] {1, -0f}, get(dev, m)); // max(-0, -1) on rank 0's -r = -0
            Tensor avg = put(dev, 2 * r, 4);
            c.allReduce(avg, ReduceOp.AVG);
            assertArrayEquals(new float[] {1, 4}, get(dev, avg));

            Tensor in = put(dev, r, r + 1, r + 2, r + 3);
            Tensor part = dev.allocate(MemoryKind.WORKSPACE, DType.F32, 2);
            c.reduceScatter(in, part, ReduceOp.SUM);
            assertArrayEquals(rank == 0 ? new float[] {1, 3} : new float[] {5, 7}, get(dev, part));

            Tensor all = dev.allocate(MemoryKind.WORKSPACE, DType.F32, 4);
            c.allGather(put(dev, r, r), all);
            assertArrayEquals(new float[] {0, 0, 1, 1}, get(dev, all));

            int[] counts = {0, 3};
            Tensor mine = rank == 0 ? dev.allocate(MemoryKind.WORKSPACE, DType.F32, 0) : put(dev, 7, 8, 9);
            Tensor gathered = dev.allocate(MemoryKind.WORKSPACE, DType.F32, 3);
            c.allGatherV(mine, gathered, counts);
            assertArrayEquals(new float[] {7, 8, 9}, get(dev, gathered));

            Tensor b = put(dev, r + 5, r + 6);
            c.broadcast(b, 1);
            assertArrayEquals(new float[] {6, 7}, get(dev, b));

            // uneven all-to-all: rank 0 sends 1 to itself and 2 to rank 1; rank 1 sends 3 to rank 0 and none to itself
            int[] send = rank == 0 ? new int[] {1, 2} : new int[] {3, 0};
            int[] recv = rank == 0 ? new int[] {1, 3} : new int[] {2, 0};
            Tensor a2aIn = rank == 0 ? put(dev, 1, 2, 3) : put(dev, 4, 5, 6);
            Tensor a2aOut = dev.allocate(MemoryKind.WORKSPACE, DType.F32, rank == 0 ? 4 : 2);
            c.allToAll(a2aIn, send, a2aOut, recv);
            assertArrayEquals(rank == 0 ? new float[] {1, 4, 5, 6} : new float[] {2, 3}, get(dev, a2aOut));

            // point to point: a grouped exchange, then matched send / receive
            Tensor mineX = put(dev, 100 + r), theirs = dev.allocate(MemoryKind.WORKSPACE, DType.F32, 1);
            c.sendRecv(mineX, 1 - rank, theirs, 1 - rank).await();
            assertArrayEquals(new float[] {101 - r}, get(dev, theirs));
            if (rank == 0) {
                c.isend(put(dev, 42), 1, 0).await();
            } else {
                Tensor got = dev.allocate(MemoryKind.WORKSPACE, DType.F32, 1);
                c.irecv(got, 0, 0).await();
                assertArrayEquals(new float[] {42}, get(dev, got));
            }

            // bf16 sums round once, to nearest even
            Tensor h = dev.allocate(MemoryKind.WORKSPACE, DType.BF16, 2);
            ByteBuffer hb = ByteBuffer.allocateDirect(4).order(ByteOrder.nativeOrder());
            hb.putShort(0, (short) (Float.floatToIntBits(1f) >>> 16)).putShort(2, (short) (Float.floatToIntBits(0.5f) >>> 16));
            dev.upload(h, hb);
            c.allReduce(h, ReduceOp.SUM);
            ByteBuffer back = ByteBuffer.allocateDirect(4).order(ByteOrder.nativeOrder());
            dev.download(back, h);
            assertEquals(2f, Float.intBitsToFloat((back.getShort(0) & 0xffff) << 16));
            assertEquals(1f, Float.intBitsToFloat((back.getShort(2) & 0xffff) << 16));

            try (var sub = c.subGroup(1, new int[] {0, 1})) {
                Tensor s = put(dev, 1);
                sub.allReduce(s, ReduceOp.SUM);
                assertArrayEquals(new float[] {2}, get(dev, s));
            }
            c.barrier();
        });
    }

    @Test
    void aMissingPeerTimesOutInsteadOfHanging() throws Exception {
        requireDevices(2);
        long start = System.nanoTime();
        CommException e = assertThrows(CommException.class, () -> ranks(2, Duration.ofMillis(1500), (rank, dev, c) -> {
            if (rank == 1) {
                return; // never joins the all-reduce
            }
            Tensor t = put(dev, 1);
            c.allReduce(t, ReduceOp.SUM);
            dev.synchronize();
        }));
        assertTrue(e.getMessage().contains("allReduce(1 F32) did not complete within 1500 ms"), e.getMessage());
        assertTrue(System.nanoTime() - start < TimeUnit.SECONDS.toNanos(60), "failed fast");
    }

    @Test
    void abortFailsLaterOperations() throws Exception {
        ranks(1, Duration.ofSeconds(60), (rank, dev, c) -> {
            c.abort("test abort");
            CommException e = assertThrows(CommException.class, () -> c.allReduce(put(dev, 1), ReduceOp.SUM));
            assertTrue(e.getMessage().contains("test abort"), e.getMessage());
        });
    }
}
