package org.sparkatron.parallel;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.sparkatron.bench.BenchArgs;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.MemoryEstimate;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Recompute;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench-cp}: context parallelism on CPU ranks as threads of this JVM (TCP on loopback, one BLAS
 * thread per rank).
 *
 * <p>Memory. For each sequence length and CP size: the activation bytes of one transformer layer on a rank (the
 * per-token attention and MLP activations, {@code MemoryEstimate}'s layer difference), their ratio to CP 1 (the
 * goal: 1/cp), and the whole activation figure of rank 0 (layers, the rank's scratch and its CP attention
 * buffers); where the sequence is at most {@code --measure-max}, a real training step gives the device's figure
 * beside the prediction.
 *
 * <p>Time. One step of ring ({@code p2p}) and of all-gather attention at each CP size on the same batch, the median
 * of {@code --steps} timed steps after one warm-up, and their ratio. On a machine with fewer cores than ranks the
 * ranks take turns on the cores: the ratio of the two modes is what means something, not the absolute times.
 */
public final class CpBench {
    private CpBench() {
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-cp [--cp 1,2,4] [--seqs 2048,8192,32768] [--measure-max 2048] [--time-seq 1024]",
            "         [--steps 3] [--family gpt2|llama] [--layers 2] [--width 64] [--heads 4] [--batch 1] [--vocab 512]",
            "  context parallelism in one JVM: activations per rank against CP 1 (goal 1/cp), measured beside",
            "  MemoryEstimate, and the step time of ring against all-gather attention (docs/parallel.md)");

    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("bench-cp", USAGE, argv, args -> {
            bench(args);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    static void bench(String[] argv) throws Exception {
        BenchArgs a = new BenchArgs("bench-cp", argv, Set.of("cp", "seqs", "measure-max", "time-seq", "steps", "family", "layers",
                "width", "heads", "batch", "vocab"), Set.of());
        int[] cps = a.integers("cp", 1, 2, 4);
        int[] seqs = a.integers("seqs", 2048, 8192, 32768);
        int measureMax = a.integer("measure-max", 2048);
        int timeSeq = a.integer("time-seq", 1024);
        int steps = a.integer("steps", 3);
        int layers = a.integer("layers", 2);
        int batch = a.integer("batch", 1);
        int maxSeq = Math.max(timeSeq, java.util.Arrays.stream(seqs).max().orElse(timeSeq));
        ModelConfig cfg = BenchArgs.model(a.string("family", "gpt2"), layers, a.integer("width", 64), a.integer("heads", 4), maxSeq,
                a.integer("vocab", 512));
        System.out.printf(Locale.ROOT, "bench-cp: %s L=%d C=%d H=%d micro-batch %d, fp32, %d cores%n",
                cfg.family().name().toLowerCase(Locale.ROOT), layers, cfg.hidden(), cfg.heads(), batch,
                Runtime.getRuntime().availableProcessors());
        System.out.println("\nactivations per rank (bytes; ring attention; per layer = attention + MLP activations of one layer)");
        System.out.println("    seq  cp   per layer  x CP 1   rank 0 predicted  rank 0 measured");
        for (int seq : seqs) {
            long layerAtCp1 = 0;
            for (int cp : cps) {
                if (seq % (2 * cp) != 0) {
                    continue;
                }
                long layer = layerBytes(cfg, batch, seq, cp);
                if (cp == 1) {
                    layerAtCp1 = layer;
                }
                long predicted = estimate(cfg, cfg.layers(), batch, seq, cp, ContextParallel.CommType.P2P).activations();
                String measured = "-";
                if (seq <= measureMax) {
                    Result r = run(cfg, cp, ContextParallel.CommType.P2P, batch, seq, 1);
                    measured = Long.toString(r.activations);
                }
                System.out.printf(Locale.ROOT, "%7d %3d %11d  %s  %16d  %15s%n", seq, cp, layer,
                        layerAtCp1 == 0 ? "   -  " : String.format(Locale.ROOT, "%6.3f", layer / (double) layerAtCp1), predicted,
                        measured);
            }
        }
        System.out.printf(Locale.ROOT, "%nstep time at seq %d (median of %d steps after a warm-up; ms)%n", timeSeq, steps);
        System.out.println(" cp      ring  all_gather  ring / all_gather");
        for (int cp : cps) {
            if (cp == 1 || timeSeq % (2 * cp) != 0) {
                continue;
            }
            double ring = run(cfg, cp, ContextParallel.CommType.P2P, batch, timeSeq, steps).stepMs;
            double gather = run(cfg, cp, ContextParallel.CommType.ALL_GATHER, batch, timeSeq, steps).stepMs;
            System.out.printf(Locale.ROOT, "%3d %9.1f %11.1f %18.3f%n", cp, ring, gather, ring / gather);
        }
    }

    /** Activation bytes of one layer on a rank: the estimate's difference between two layers and one. */
    static long layerBytes(ModelConfig cfg, int batch, int seq, int cp) {
        return estimate(cfg, 2, batch, seq, cp, ContextParallel.CommType.P2P).activations()
                - estimate(cfg, 1, batch, seq, cp, ContextParallel.CommType.P2P).activations();
    }

    private static MemoryEstimate estimate(ModelConfig cfg, int layers, int batch, int seq, int cp, ContextParallel.CommType type) {
        ModelConfig c = new ModelConfig(cfg.family(), layers, cfg.hidden(), cfg.heads(), cfg.kvHeads(), cfg.ffnHidden(),
                cfg.vocabSize(), cfg.maxPositions(), cfg.normEps(), cfg.ropeTheta(), cfg.tiedEmbeddings(), cfg.vocabMultiple());
        return MemoryEstimate.of(c, 1, false, PipelineLayout.single(layers), 0, 1, batch, seq, Precision.FP32, Recompute.NONE, 4,
                new MemoryEstimate.Context(cp, 0, type));
    }

    record Result(double stepMs, long activations) {
    }

    /** CP {@code cp} ranks train {@code 1 + timed} steps on one batch; rank 0's activation bytes and median step time. */
    private static Result run(ModelConfig cfg, int cp, ContextParallel.CommType type, int batch, int seq, int timed)
            throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(cp, 60_000);
        byte[] secret = "bench-cp-secret-0123456789abcdef".getBytes(StandardCharsets.UTF_8);
        ExecutorService pool = Executors.newFixedThreadPool(cp);
        Blas.setThreads(1);
        try {
            List<Future<Result>> fs = new ArrayList<>();
            for (int r = 0; r < cp; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (TcpCommunicator world = TcpCommunicator.create(rank, cp, rv.forRank(rank), secret,
                            TcpOptions.loopback().withTimeouts(60_000, 600_000));
                         ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(cp, 1, cp, 1, 1, 1), world);
                         CpuDevice device = new CpuDevice()) {
                        RankContext ctx = new RankContext(device, TensorParallel.none(), Precision.FP32)
                                .withContextParallel(new ContextParallel(pg.cp(), type));
                        Transformer m = new Transformer(cfg, ctx);
                        m.initialize(1);
                        Trainer.Options d = Trainer.Options.defaults(batch, LrSchedule.constant(1e-3));
                        Trainer tr = new Trainer(m, BenchArgs.randomSamples(cfg, seq), d, averaging(pg));
                        tr.step();
                        long acts = device.memory().requested(MemoryKind.ACTIVATIONS);
                        double[] ms = new double[Math.max(1, timed)];
                        for (int s = 0; s < timed; s++) {
                            long t0 = System.nanoTime();
                            tr.step();
                            ms[s] = (System.nanoTime() - t0) / 1e6;
                        }
                        tr.close();
                        m.close();
                        return new Result(BenchArgs.median(ms), acts);
                    }
                }));
            }
            Result first = null;
            for (Future<Result> f : fs) {
                Result r = f.get();
                first = first == null ? r : first;
            }
            return first;
        } finally {
            pool.shutdownNow();
        }
    }

    /** Gradients averaged over the CP group (DP x CP with DP 1), as the trainer requires under CP. */
    private static GradientSync averaging(ProcessGroups pg) {
        return new GradientSync() {
            @Override
            public void syncGradients(Tensor grads) {
                if (pg.dpWithCp().size() > 1) {
                    pg.dpWithCp().allReduce(grads, ReduceOp.AVG);
                }
            }

            @Override
            public void averageScalars(Tensor scalars) {
            }
        };
    }
}
