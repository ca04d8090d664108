package org.sparkatron.comm;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.sparkatron.comm.tcp.TcpOptions;

/**
 * Runs n ranks as threads of this JVM, each connected as the Spark integration connects them
 * ({@link Communicators#connect}: a loopback TCP mesh with shared-memory collectives; one rank: a
 * {@link SelfCommunicator}). A failing rank aborts its world so the others fail fast; results come back
 * in rank order, and exceptions (the first one) are rethrown as they are, so tests can inspect them.
 */
public final class LocalRanks {
    private static final byte[] SECRET = "local-ranks-test-secret-0123456789".getBytes(StandardCharsets.UTF_8);

    /** One rank's work, given its rank and its world communicator. */
    public interface Body<T> {
        T run(int rank, Communicator world) throws Exception;
    }

    private LocalRanks() {
    }

    /** Runs {@code body} on n ranks; returns their results in rank order, or rethrows the first failure. */
    public static <T> List<T> run(int n, Body<T> body) throws Exception {
        if (n == 1) {
            try (Communicator c = new SelfCommunicator()) {
                List<T> one = new ArrayList<>();
                one.add(body.run(0, c));
                return one;
            }
        }
        InProcessRendezvous rv = new InProcessRendezvous(n, 20_000);
        TcpOptions opts = TcpOptions.loopback().withTimeouts(20_000, 30_000);
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (Communicator c = Communicators.connect(rank, n, rv.forRank(rank), SECRET, opts)) {
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
            Exception first = null;
            for (Future<T> f : fs) {
                try {
                    out.add(f.get(120, TimeUnit.SECONDS));
                } catch (ExecutionException e) {
                    if (first == null) {
                        first = e.getCause() instanceof Exception x ? x : new RuntimeException(e.getCause());
                    }
                }
            }
            if (first != null) {
                throw first;
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
