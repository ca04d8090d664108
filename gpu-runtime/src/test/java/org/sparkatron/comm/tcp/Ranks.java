package org.sparkatron.comm.tcp;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.sparkatron.comm.InProcessRendezvous;

/** Runs n ranks as threads of this JVM, each with a TcpCommunicator on loopback. */
final class Ranks {
    static final byte[] SECRET = "test-job-secret-0123456789abcdef".getBytes(StandardCharsets.UTF_8);

    interface Body<T> {
        T run(int rank, TcpCommunicator comm) throws Exception;
    }

    /** Outcome of one rank: its value, or the exception it threw, and when it finished. */
    static final class Outcome<T> {
        T value;
        Throwable error;
        long elapsedMs;
    }

    private Ranks() {
    }

    static TcpOptions fast() {
        return TcpOptions.loopback().withTimeouts(10_000, 10_000);
    }

    /** Runs body on every rank; rethrows the first failure. */
    static <T> List<T> run(int n, TcpOptions opts, Body<T> body) throws Exception {
        List<T> out = new ArrayList<>();
        for (Outcome<T> o : runAll(n, opts, SECRET, body, 60)) {
            if (o.error != null) {
                throw new AssertionError("a rank failed: " + o.error, o.error);
            }
            out.add(o.value);
        }
        return out;
    }

    /** Runs body on every rank (creating the communicator inside the rank's thread); collects outcomes. */
    static <T> List<Outcome<T>> runAll(int n, TcpOptions opts, byte[] secret, Body<T> body, int limitSeconds)
            throws InterruptedException, TimeoutException {
        InProcessRendezvous rv = new InProcessRendezvous(n, opts.connectTimeoutMs);
        return runEach(n, r -> {
            try (TcpCommunicator c = TcpCommunicator.create(r, n, rv.forRank(r), secret, opts)) {
                return body.run(r, c);
            }
        }, limitSeconds);
    }

    interface RankTask<T> {
        T run(int rank) throws Exception;
    }

    static <T> List<Outcome<T>> runEach(int n, RankTask<T> task, int limitSeconds)
            throws InterruptedException, TimeoutException {
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            long start = System.nanoTime();
            List<Future<Outcome<T>>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    Outcome<T> o = new Outcome<>();
                    try {
                        o.value = task.run(rank);
                    } catch (Throwable t) {
                        o.error = t;
                    }
                    o.elapsedMs = (System.nanoTime() - start) / 1_000_000L;
                    return o;
                }));
            }
            List<Outcome<T>> out = new ArrayList<>();
            for (Future<Outcome<T>> f : fs) {
                try {
                    out.add(f.get(limitSeconds, TimeUnit.SECONDS));
                } catch (ExecutionException e) {
                    throw new AssertionError(e.getCause());
                }
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
