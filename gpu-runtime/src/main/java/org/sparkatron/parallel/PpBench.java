package org.sparkatron.parallel;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.sparkatron.bench.BenchArgs;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Recompute;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.pipeline.PipelineOp;
import org.sparkatron.parallel.pipeline.Schedule;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench-pp}: pipeline parallelism on CPU ranks as threads of this JVM (TCP on loopback,
 * one BLAS thread per rank).
 *
 * <p>Bubble. For each schedule (1F1B and interleaved 1F1B, each pipeline size asked for) it times every
 * forward and backward of the last step on every stage, then replays that step with those durations on
 * {@code p} independent processors, honouring each stage's operation order and the data dependencies
 * between stages: bubble = 1 - (busy time of all stages) / (p x replayed step time), printed beside the
 * theory ({@code (p - 1) / (m + p - 1)} for 1F1B, {@code (p - 1) / (v m + p - 1)} interleaved). The replay
 * is what a machine with a core per stage would see; the wall-clock bubble of the run is printed too, but on
 * a machine with fewer cores than stages the ranks take turns on the cores and it means little.
 *
 * <p>Memory. For each recompute mode: the activation bytes stage 0 holds (the device's figure, requested
 * bytes), beside {@code MemoryEstimate}'s prediction and the per-layer figure of Korthikanti et al. with
 * our stated differences (docs/parallel.md).
 */
public final class PpBench {
    private PpBench() {
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-pp [--pp 2,4] [--vpp 2] [--micro 8] [--steps 2] [--family gpt2|llama]",
            "         [--layers 8] [--width 128] [--heads 4] [--seq 64] [--batch 2] [--vocab 2048]",
            "  pipeline schedules (1F1B, interleaved) in one JVM: bubble against (p-1)/(v*m+p-1), and activation",
            "  memory per recompute mode against MemoryEstimate (docs/parallel.md)");

    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("bench-pp", USAGE, argv, args -> {
            bench(args);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    static void bench(String[] argv) throws Exception {
        BenchArgs a = new BenchArgs("bench-pp", argv, Set.of("pp", "vpp", "micro", "layers", "width", "heads", "seq", "batch",
                "vocab", "family", "steps"), Set.of());
        int[] pps = a.integers("pp", 2, 4);
        int vpp = a.integer("vpp", 2);
        int micro = a.integer("micro", 8);
        int layers = a.integer("layers", 8);
        int seq = a.integer("seq", 64);
        int batch = a.integer("batch", 2);
        int steps = a.integer("steps", 2);
        ModelConfig cfg = BenchArgs.model(a.string("family", "gpt2"), layers, a.integer("width", 128), a.integer("heads", 4), seq,
                a.integer("vocab", 2048));
        System.out.printf(Locale.ROOT, "bench-pp: %s L=%d C=%d T=%d micro-batch %d, %d micro-batches, %d steps (the last timed), "
                + "%d cores%n", cfg.family().name().toLowerCase(Locale.ROOT), layers, cfg.hidden(), seq, batch, micro, steps,
                Runtime.getRuntime().availableProcessors());
        System.out.println("schedule                 p  v   m  bubble theory  replayed  wall-clock");
        for (int p : pps) {
            for (int v : new int[] {1, vpp}) {
                if (layers % (p * v) != 0 || (v > 1 && micro % p != 0)) {
                    continue;
                }
                Result r = run(cfg, p, v, micro, batch, seq, steps, Recompute.NONE);
                double theory = (p - 1.0) / (v * micro + p - 1.0);
                System.out.printf(Locale.ROOT, "%-22s %3d %2d %3d  %13.3f  %8.3f  %10.3f%n", Schedule.of(p, v, micro).name(), p, v,
                        micro, theory, r.replayedBubble, r.wallBubble);
            }
        }
        int p = pps[0];
        System.out.printf(Locale.ROOT, "%nactivations on stage 0 of PP %d (1F1B, %d micro-batches in flight there; bytes the device holds)%n",
                p, Math.min(p, micro));
        System.out.println("recompute   measured      predicted     per layer (= Korthikanti's formula with our differences)");
        for (Recompute mode : Recompute.values()) {
            Result r = run(cfg, p, 1, micro, batch, seq, 1, mode);
            System.out.printf(Locale.ROOT, "%-9s %12d %12d   %d%n", mode.label(), r.activations, r.predicted, r.perLayer);
        }
    }

    record Result(double replayedBubble, double wallBubble, long activations, long predicted, long perLayer) {
    }

    private static Result run(ModelConfig cfg, int p, int v, int micro, int batch, int seq, int steps, Recompute mode)
            throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(p, 60_000);
        byte[] secret = "bench-pp-secret-0123456789abcdef".getBytes(StandardCharsets.UTF_8);
        ExecutorService pool = Executors.newFixedThreadPool(p);
        Blas.setThreads(1);
        try {
            List<Future<Object[]>> fs = new ArrayList<>();
            for (int r = 0; r < p; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (TcpCommunicator world = TcpCommunicator.create(rank, p, rv.forRank(rank), secret,
                            TcpOptions.loopback().withTimeouts(60_000, 600_000));
                         ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(p, 1, 1, 1, p, v), world);
                         CpuDevice device = new CpuDevice()) {
                        PipelineParallel stage = new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), p, v, -1, -1),
                                pg.embedding());
                        Transformer m = new Transformer(cfg, new RankContext(device, TensorParallel.none(), Precision.FP32, stage));
                        m.initialize(1);
                        m.setRecompute(mode);
                        Trainer.Options d = Trainer.Options.defaults(batch, LrSchedule.constant(1e-3));
                        Trainer tr = new Trainer(m, BenchArgs.randomSamples(cfg, seq), new Trainer.Options(batch, micro,
                                d.schedule(), d.beta1(), d.beta2(), d.eps(), d.weightDecay(), d.gradClip()), GradientSync.NONE);
                        for (int s = 0; s < steps - 1; s++) {
                            tr.step();
                        }
                        List<long[]> ops = new ArrayList<>(); // {kind, micro-batch, chunk, start, end}
                        m.setOpListener((op, t0, t1) -> {
                            if (op.isCompute()) {
                                ops.add(new long[] {op.kind().ordinal(), op.microBatch(), op.chunk(), t0, t1});
                            }
                        });
                        long t0 = System.nanoTime();
                        tr.step();
                        long wall = System.nanoTime() - t0;
                        m.setOpListener(null);
                        long acts = device.memory().requested(MemoryKind.ACTIVATIONS);
                        long predicted = m.memoryEstimate(batch, seq, micro).activations();
                        return new Object[] {ops, wall, acts, predicted};
                    }
                }));
            }
            List<List<long[]>> ops = new ArrayList<>();
            long wall = 0;
            long busy = 0;
            Object[] first = null;
            for (Future<Object[]> f : fs) {
                Object[] o = f.get();
                first = first == null ? o : first;
                @SuppressWarnings("unchecked")
                List<long[]> l = (List<long[]>) o[0];
                ops.add(l);
                wall = Math.max(wall, (Long) o[1]);
                for (long[] op : l) {
                    busy += op[4] - op[3];
                }
            }
            double replayed = 1 - busy / (double) (p * replay(ops, p, v));
            double wallBubble = 1 - busy / (double) (p * wall);
            long perLayer = activations(cfg, 2, batch, seq, mode) - activations(cfg, 1, batch, seq, mode);
            return new Result(replayed, wallBubble, (Long) first[2], (Long) first[3], perLayer);
        } finally {
            pool.shutdownNow();
        }
    }

    /** Predicted activation bytes of the model with {@code layers} layers, one rank, one micro-batch. */
    private static long activations(ModelConfig cfg, int layers, int batch, int seq, Recompute mode) {
        ModelConfig c = new ModelConfig(cfg.family(), layers, cfg.hidden(), cfg.heads(), cfg.kvHeads(), cfg.ffnHidden(),
                cfg.vocabSize(), cfg.maxPositions(), cfg.normEps(), cfg.ropeTheta(), cfg.tiedEmbeddings(), cfg.vocabMultiple());
        return org.sparkatron.model.MemoryEstimate.of(c, 1, false, PipelineLayout.single(layers), 0, 1, batch, seq,
                Precision.FP32, mode, 4).activations();
    }

    /**
     * The makespan of one step replayed with the measured durations, a processor per stage: each operation
     * starts when its stage has finished the previous one and, for a forward, the previous virtual stage has
     * finished the same micro-batch's forward, or for a backward, the next virtual stage its backward.
     */
    static long replay(List<List<long[]>> ops, int p, int v) {
        Map<String, Long> finish = new HashMap<>();
        long[] free = new long[p];
        int[] at = new int[p];
        boolean progress = true;
        while (progress) {
            progress = false;
            for (int s = 0; s < p; s++) {
                while (at[s] < ops.get(s).size()) {
                    long[] op = ops.get(s).get(at[s]);
                    boolean forward = op[0] == PipelineOp.Kind.FORWARD.ordinal();
                    int k = (int) op[2] * p + s;
                    String dep = forward ? (k == 0 ? null : "F" + op[1] + "@" + (k - 1))
                            : (k == p * v - 1 ? "F" + op[1] + "@" + k : "B" + op[1] + "@" + (k + 1));
                    Long ready = dep == null ? Long.valueOf(0) : finish.get(dep);
                    if (ready == null) {
                        break;
                    }
                    long start = Math.max(free[s], ready);
                    long end = start + (op[4] - op[3]);
                    free[s] = end;
                    finish.put((forward ? "F" : "B") + op[1] + "@" + k, end);
                    at[s]++;
                    progress = true;
                }
            }
        }
        long makespan = 0;
        for (long f : free) {
            makespan = Math.max(makespan, f);
        }
        return makespan;
    }
}
