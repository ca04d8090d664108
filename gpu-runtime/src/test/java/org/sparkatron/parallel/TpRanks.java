package org.sparkatron.parallel;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;

/**
 * Runs n ranks as threads of this JVM, each with its own {@link TcpCommunicator} on loopback (the same
 * transport as multi-host runs). A failing rank aborts its world so the others fail fast instead of
 * waiting for a timeout; the first failure is rethrown.
 */
final class TpRanks {
    private static final byte[] SECRET = "tp-test-secret-0123456789abcdef!".getBytes(StandardCharsets.UTF_8);

    interface Body<T> {
        T run(int rank, Communicator world) throws Exception;
    }

    private TpRanks() {
    }

    static <T> List<T> run(int n, Body<T> body) throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(n, 20_000);
        TcpOptions opts = TcpOptions.loopback().withTimeouts(20_000, 30_000);
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (TcpCommunicator c = TcpCommunicator.create(rank, n, rv.forRank(rank), SECRET, opts)) {
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
                    if (first == null) {
                        first = e.getCause();
                    }
                }
            }
            if (first != null) {
                throw new AssertionError("a rank failed: " + first, first);
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
