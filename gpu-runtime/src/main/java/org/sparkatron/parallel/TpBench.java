package org.sparkatron.parallel;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.Communicators;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.precision.Precision;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.bench.BenchArgs;
import org.sparkatron.train.SampleSource;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench-tp}: the tensor-parallel CPU benchmark. Times training steps (forward,
 * backward, clip, AdamW) of one model at TP = 1 and at TP = {@code --tp} (ranks as threads of this JVM,
 * TCP on loopback, one BLAS thread per rank) on the same machine, one run after the other, and prints the
 * mean step time of each, their ratio, and the share of the TP step spent inside collectives (wall time
 * in all-reduce / reduce-scatter / all-gather, including waiting for the slower rank). TP = 1 runs twice:
 * with one BLAS thread (the work of one rank) and with {@code --tp} BLAS threads (the same cores as the TP
 * run). The three configurations alternate for {@code --rounds} rounds and each figure is a median, so
 * that load from other processes on a shared machine falls on all of them alike. The losses are printed
 * so the figures are known to come from the same computation.
 */
public final class TpBench {
    private TpBench() {
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-tp [--tp 2] [--steps 3] [--rounds 3] [--family gpt2|llama] [--sp]",
            "         [--layers 4] [--width 256] [--heads 8] [--seq 128] [--batch 4] [--vocab 8192]",
            "  training-step time at TP = --tp (ranks as threads, TCP on loopback) against one rank (docs/parallel.md)");

    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("bench-tp", USAGE, argv, args -> {
            bench(args);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    static void bench(String[] args) throws Exception {
        Map<String, String> a = parse(args);
        int tp = Integer.parseInt(a.getOrDefault("tp", "2"));
        int steps = Integer.parseInt(a.getOrDefault("steps", "3"));
        int layers = Integer.parseInt(a.getOrDefault("layers", "4"));
        int width = Integer.parseInt(a.getOrDefault("width", "256"));
        int heads = Integer.parseInt(a.getOrDefault("heads", "8"));
        int seq = Integer.parseInt(a.getOrDefault("seq", "128"));
        int batch = Integer.parseInt(a.getOrDefault("batch", "4"));
        int vocab = Integer.parseInt(a.getOrDefault("vocab", "8192"));
        boolean sp = a.containsKey("sp");
        String family = a.getOrDefault("family", "gpt2");
        ModelConfig cfg = family.equals("llama")
                ? new ModelConfig(ModelConfig.Family.LLAMA, layers, width, heads, heads, 8 * width / 3 / 64 * 64, vocab, seq,
                        1e-5f, 10000, false, ModelConfig.DEFAULT_VOCAB_MULTIPLE)
                : new ModelConfig(ModelConfig.Family.GPT2, layers, width, heads, heads, 4 * width, vocab, seq, 1e-5f, 0, true,
                        ModelConfig.DEFAULT_VOCAB_MULTIPLE);
        System.out.printf(Locale.ROOT, "bench-tp: %s L=%d C=%d H=%d T=%d B=%d V=%d, %d timed steps after 1 warm-up, "
                + "%d cores available%n", family, layers, width, heads, seq, batch, vocab, steps, Runtime.getRuntime().availableProcessors());

        int rounds = Integer.parseInt(a.getOrDefault("rounds", "3"));
        // The configurations alternate, round after round, so that load from other processes falls on all
        // of them alike; each figure is the median over rounds of a round's mean step time.
        double[] one = new double[rounds];
        double[] wide = new double[rounds];
        double[] par = new double[rounds];
        double[] comm = new double[rounds];
        double[] losses = new double[3];
        for (int r = 0; r < rounds; r++) {
            Blas.setThreads(1);
            double[] o = single(cfg, batch, seq, steps);
            Blas.setThreads(tp);
            double[] w = single(cfg, batch, seq, steps);
            Blas.setThreads(1);
            double[][] ranks = parallel(cfg, batch, seq, steps, tp, sp);
            one[r] = o[0];
            wide[r] = w[0];
            for (double[] rk : ranks) {
                par[r] = Math.max(par[r], rk[0]);
                comm[r] += rk[1] / ranks.length;
            }
            comm[r] /= par[r];
            losses[0] = o[1];
            losses[1] = w[1];
            losses[2] = ranks[0][2];
            System.out.printf(Locale.ROOT, "round %d: TP=1 %.1f ms, TP=1 (%d threads) %.1f ms, TP=%d %.1f ms (%.0f%% in collectives)%n",
                    r + 1, o[0] * 1e3, tp, w[0] * 1e3, tp, par[r] * 1e3, 100 * comm[r]);
        }
        double oneMed = median(one);
        double wideMed = median(wide);
        double parMed = median(par);
        System.out.printf(Locale.ROOT, "TP=1, 1 BLAS thread:     %8.1f ms/step (median of %d rounds; loss after the last step %.6f)%n",
                oneMed * 1e3, rounds, losses[0]);
        System.out.printf(Locale.ROOT, "TP=1, %d BLAS threads:    %8.1f ms/step (loss %.6f)%n", tp, wideMed * 1e3, losses[1]);
        System.out.printf(Locale.ROOT, "TP=%d%s, 1 thread/rank: %8.1f ms/step (loss %.6f)%n", tp, sp ? "+SP" : "", parMed * 1e3,
                losses[2]);
        System.out.printf(Locale.ROOT, "speed-up TP=%d vs TP=1 (1 thread): %.2fx; vs TP=1 (%d BLAS threads): %.2fx%n", tp,
                oneMed / parMed, tp, wideMed / parMed);
        System.out.printf(Locale.ROOT, "communication share of the TP=%d step: %.1f%% (median over rounds)%n", tp, 100 * median(comm));
    }

    private static double median(double[] v) {
        double[] s = v.clone();
        java.util.Arrays.sort(s);
        return s.length % 2 == 1 ? s[s.length / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    }

    private static Map<String, String> parse(String[] args) {
        Map<String, String> m = new HashMap<>();
        int i = 0;
        if (args.length > 0 && args[0].equals("bench-tp")) {
            i = 1;
        }
        for (; i < args.length; i++) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --option, got '" + args[i] + "'");
            }
            String k = args[i].substring(2);
            if (k.equals("sp")) {
                m.put(k, "true");
            } else if (i + 1 < args.length) {
                m.put(k, args[++i]);
            } else {
                throw new IllegalArgumentException("option --" + k + " needs a value");
            }
        }
        for (String k : m.keySet()) {
            if (!List.of("tp", "steps", "rounds", "layers", "width", "heads", "seq", "batch", "vocab", "sp", "family").contains(k)) {
                throw new IllegalArgumentException("unknown option --" + k
                        + " (known: --tp --steps --rounds --layers --width --heads --seq --batch --vocab --family gpt2|llama --sp)");
            }
        }
        return m;
    }

    private static Trainer.Options options(int batch) {
        return Trainer.Options.defaults(batch, LrSchedule.constant(1e-3));
    }

    /** {mean seconds per step, last loss}. */
    private static double[] single(ModelConfig cfg, int batch, int seq, int steps) {
        Transformer m = new Transformer(cfg, new CpuDevice());
        m.initialize(1);
        Trainer tr = new Trainer(m, BenchArgs.randomSamples(cfg, seq), options(batch));
        tr.step();
        long t0 = System.nanoTime();
        double loss = 0;
        for (int s = 0; s < steps; s++) {
            loss = tr.step().loss();
        }
        return new double[] {(System.nanoTime() - t0) / 1e9 / steps, loss};
    }

    /** Per rank {mean seconds per step, mean seconds per step in collectives, last loss}. */
    private static double[][] parallel(ModelConfig cfg, int batch, int seq, int steps, int tp, boolean sp) throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(tp, 60_000);
        byte[] secret = "bench-tp-secret-0123456789abcdef".getBytes(StandardCharsets.UTF_8);
        ExecutorService pool = Executors.newFixedThreadPool(tp);
        try {
            List<Future<double[]>> fs = new ArrayList<>();
            for (int r = 0; r < tp; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (Communicator world = Communicators.connect(rank, tp, rv.forRank(rank), secret,
                            TcpOptions.loopback().withTimeouts(60_000, 300_000))) {
                        TimedCommunicator timed = new TimedCommunicator(world);
                        Transformer m = new Transformer(cfg, new RankContext(new CpuDevice(), new TensorParallel(timed, sp), Precision.FP32));
                        m.initialize(1);
                        SampleSource src = new TpBroadcastSource(rank == 0 ? BenchArgs.randomSamples(cfg, seq) : null, seq + 1, timed);
                        Trainer tr = new Trainer(m, src, options(batch));
                        tr.step();
                        timed.reset();
                        long t0 = System.nanoTime();
                        double loss = 0;
                        for (int s = 0; s < steps; s++) {
                            loss = tr.step().loss();
                        }
                        double secs = (System.nanoTime() - t0) / 1e9;
                        return new double[] {secs / steps, timed.nanos() / 1e9 / steps, loss};
                    }
                }));
            }
            double[][] out = new double[tp][];
            for (int r = 0; r < tp; r++) {
                out[r] = fs.get(r).get();
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
