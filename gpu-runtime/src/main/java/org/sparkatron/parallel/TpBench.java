package org.sparkatron.parallel;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuKernels;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.train.SampleSource;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench-tp}: the tensor-parallel CPU benchmark. Times training steps (forward,
 * backward, clip, AdamW) of one model at TP = 1 and at TP = {@code --tp} (ranks as threads of this JVM,
 * TCP on loopback, one BLAS thread per rank) on the same machine, one run after the other, and prints the
 * mean step time of each, their ratio, and the share of the TP step spent inside collectives (wall time
 * in all-reduce / reduce-scatter / all-gather, including waiting for the slower rank). TP = 1 runs twice:
 * with one BLAS thread (the work of one rank) and with {@code --tp} BLAS threads (the same cores as the TP
 * run). The losses of both runs are printed so the figures are known to come from the same computation.
 */
public final class TpBench {
    private TpBench() {
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> a = parse(args);
        int tp = Integer.parseInt(a.getOrDefault("tp", "2"));
        int steps = Integer.parseInt(a.getOrDefault("steps", "5"));
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

        Blas.setThreads(1);
        double[] one = single(cfg, batch, seq, steps);
        Blas.setThreads(tp);
        double[] oneWide = single(cfg, batch, seq, steps);
        Blas.setThreads(1);
        double[][] ranks = parallel(cfg, batch, seq, steps, tp, sp);
        double tpStep = 0;
        double comm = 0;
        for (double[] r : ranks) {
            tpStep = Math.max(tpStep, r[0]);
            comm += r[1] / ranks.length;
        }
        System.out.printf(Locale.ROOT, "TP=1, 1 BLAS thread:    %8.1f ms/step  (loss after last step %.6f)%n", one[0] * 1e3, one[1]);
        System.out.printf(Locale.ROOT, "TP=1, %d BLAS threads:   %8.1f ms/step  (loss %.6f)%n", tp, oneWide[0] * 1e3, oneWide[1]);
        System.out.printf(Locale.ROOT, "TP=%d%s, 1 thread/rank:  %8.1f ms/step  (loss %.6f)%n", tp, sp ? "+SP" : "", tpStep * 1e3,
                ranks[0][2]);
        System.out.printf(Locale.ROOT, "speed-up TP=%d vs TP=1 (1 thread): %.2fx; vs TP=1 (%d threads): %.2fx%n", tp, one[0] / tpStep,
                tp, oneWide[0] / tpStep);
        System.out.printf(Locale.ROOT, "communication share of the TP=%d step: %.1f%% (%.1f ms/step in collectives)%n", tp,
                100 * comm / tpStep, comm * 1e3);
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
            if (!List.of("tp", "steps", "layers", "width", "heads", "seq", "batch", "vocab", "sp", "family").contains(k)) {
                throw new IllegalArgumentException("unknown option --" + k
                        + " (known: --tp --steps --layers --width --heads --seq --batch --vocab --family gpt2|llama --sp)");
            }
        }
        return m;
    }

    private static SampleSource data(ModelConfig cfg, int seq) {
        return new SampleSource() {
            private final SplittableRandom rng = new SplittableRandom(0);
            private long n;

            @Override
            public int sampleLength() {
                return seq + 1;
            }

            @Override
            public boolean next(int[] out, int offset) {
                for (int i = 0; i <= seq; i++) {
                    out[offset + i] = rng.nextInt(cfg.vocabSize());
                }
                n++;
                return true;
            }

            @Override
            public long consumed() {
                return n;
            }
        };
    }

    private static Trainer.Options options(int batch) {
        return Trainer.Options.defaults(batch, LrSchedule.constant(1e-3));
    }

    /** {mean seconds per step, last loss}. */
    private static double[] single(ModelConfig cfg, int batch, int seq, int steps) {
        Transformer m = new Transformer(cfg, new CpuKernels());
        m.initialize(1);
        Trainer tr = new Trainer(m, data(cfg, seq), options(batch));
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
                    try (TcpCommunicator world = TcpCommunicator.create(rank, tp, rv.forRank(rank), secret,
                            TcpOptions.loopback().withTimeouts(60_000, 300_000))) {
                        TimedCommunicator timed = new TimedCommunicator(world);
                        Transformer m = new Transformer(cfg, new CpuKernels(), new TensorParallel(timed, sp));
                        m.initialize(1);
                        SampleSource src = new TpBroadcastSource(rank == 0 ? data(cfg, seq) : null, seq + 1, timed);
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
