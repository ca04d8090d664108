package org.sparkatron.comm.bench;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.util.Arrays;
import org.sparkatron.comm.Communicator;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The machine's own limits for bench-comm's all-reduce ({@code --ceiling}), measured by the same ranks in
 * the same run, so that a figure can be read as a fraction of what this host allows at that moment:
 * <ul>
 *   <li>{@link #ringBytesOverTcp}: raw loopback TCP, no framing, no reduction, no library: each rank streams
 *       2(n-1)/n of the tensor to its right neighbour while reading as much from its left, which is what a
 *       ring all-reduce moves over every link. An all-reduce over TCP cannot beat it on this host, since the
 *       kernel's two copies per byte are the same work.</li>
 *   <li>{@link #copyEverywhere}: every rank copies its own tensor at once: one read and one write of the
 *       tensor per rank, the memory traffic of the shared-memory all-reduce of ranks that are threads of one
 *       JVM (the staged path of processes adds a copy through the segment).</li>
 * </ul>
 * Each returns the median over iterations of rank 0's time after a barrier, as the all-reduce measurement.
 * Blocking; one caller per communicator.
 */
final class CommCeiling {
    private static final int WRITE = 1 << 20;

    private CommCeiling() {
    }

    static double ringBytesOverTcp(Communicator c, long size, int iters) {
        int n = c.size();
        int r = c.rank();
        long bytes = size * 2 * (n - 1) / n;
        try (ServerSocketChannel server = ServerSocketChannel.open()) {
            server.bind(new InetSocketAddress("127.0.0.1", 0));
            Tensor ports = Tensor.allocateHost(DType.I32, n);
            Tensor mine = Tensor.allocateHost(DType.I32, 1);
            mine.hostBuffer().putInt(0, ((InetSocketAddress) server.getLocalAddress()).getPort());
            c.allGather(mine, ports);
            try (SocketChannel right = SocketChannel.open(new InetSocketAddress("127.0.0.1",
                    ports.hostBuffer().getInt(4 * ((r + 1) % n))));
                 SocketChannel left = server.accept()) {
                right.socket().setTcpNoDelay(true);
                ByteBuffer out = ByteBuffer.allocateDirect((int) Math.min(size, Integer.MAX_VALUE - 8));
                ByteBuffer in = ByteBuffer.allocateDirect(out.capacity());
                double[] ts = new double[iters + 1];
                for (int i = 0; i <= iters; i++) {
                    c.barrier();
                    long t0 = System.nanoTime();
                    Thread writer = new Thread(() -> stream(right, out, bytes, true), "ceiling-writer");
                    writer.start();
                    stream(left, in, bytes, false);
                    writer.join();
                    ts[i] = (System.nanoTime() - t0) / 1e9;
                }
                // The first exchange also grows the sockets' windows: left out, like the all-reduce's warm-up.
                return median(Arrays.copyOfRange(ts, 1, ts.length));
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted", e);
        }
    }

    /** Writes or reads {@code bytes} in 1 MiB pieces cycling through {@code buf}. */
    private static void stream(SocketChannel ch, ByteBuffer buf, long bytes, boolean write) {
        try {
            for (long done = 0; done < bytes; ) {
                int at = (int) (done % buf.capacity());
                ByteBuffer piece = buf.slice(at, (int) Math.min(WRITE, Math.min(bytes - done, buf.capacity() - at)));
                while (piece.hasRemaining()) {
                    int k = write ? ch.write(piece) : ch.read(piece);
                    if (k < 0) {
                        throw new IOException("peer closed the ceiling stream");
                    }
                }
                done += piece.capacity();
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static double copyEverywhere(Communicator c, long size, int iters) {
        ByteBuffer src = ByteBuffer.allocateDirect((int) size);
        ByteBuffer dst = ByteBuffer.allocateDirect((int) size);
        double[] ts = new double[iters + 1];
        for (int i = 0; i <= iters; i++) {
            c.barrier();
            long t0 = System.nanoTime();
            dst.put(0, src, 0, (int) size);
            ts[i] = (System.nanoTime() - t0) / 1e9;
        }
        return median(Arrays.copyOfRange(ts, 1, ts.length));
    }

    private static double median(double[] ts) {
        double[] a = ts.clone();
        Arrays.sort(a);
        return a[a.length / 2];
    }
}
