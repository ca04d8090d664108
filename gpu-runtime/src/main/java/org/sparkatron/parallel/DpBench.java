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
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench-dp}: data parallelism inside the engine on CPU ranks as threads of this JVM (TCP on
 * loopback, one BLAS thread per rank).
 *
 * <p>Overlap. The same training steps at {@code dp} ranks with {@code overlap_grad_reduce} off (one bucket per
 * buffer, reduced after the backward) and on (buckets of {@code --bucket-mb}, each reduced on the
 * communication lane as soon as the backward finished it), alternating the two for {@code --rounds} rounds: the
 * median step time of each (the slowest rank's), their ratio, and per step the time the gradient reductions
 * ran and the part the rank waited for them after its backward; hidden = 1 - waited / ran. On a machine with fewer free cores than ranks plus lanes the
 * lane competes with the backward for a core, and less is hidden. With {@code --overlap-param-gather} (and
 * {@code --distributed-optimizer}) a third configuration joins the rounds: overlapped reduction and the
 * parameter all-gather deferred to the next forward ({@code overlap_param_gather}), with the time the gathers
 * ran on the lane and the part the forward waited for them, and its step time against overlapped reduction
 * alone.
 *
 * <p>Memory. Per rank, the bytes the device holds for parameters, gradients and optimizer state, per
 * parameter, beside Megatron's accounting (fp32: 4 + 4 + 8 = 16 bytes; bf16 without sharding: 2 + 4 + 4 + 8 = 18;
 * distributed optimizer: {@code 2 + 4 + 12/dp} with bf16, {@code 4 + 4 + 8/dp} in fp32), measured after training
 * steps (the 16-bit weights are BF16 elements then). The measured figure includes Megatron's padding of the
 * distributed optimizer's buffers (parameters to 64 elements, buckets to lcm(dp, 128)). Beside it, the fp32
 * buffer one unit's 16-bit weights are widened into before its kernels read them (workspace, not in Megatron's
 * accounting), per parameter.
 */
public final class DpBench {
    private DpBench() {
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-dp [--dp 2] [--bucket-mb 1] [--distributed-optimizer [--overlap-param-gather]] [--precision fp32|bf16]",
            "         [--rounds 3] [--steps 3]",
            "         [--family gpt2|llama] [--layers 8] [--width 256] [--heads 4] [--seq 64] [--batch 2] [--micro 2] [--vocab 8192]",
            "  data parallelism in one JVM: step time with overlap_grad_reduce off and on (alternating rounds, medians),",
            "  the share of the gradient reduction hidden behind the backward (and of the parameter gather behind the forward),",
            "  and memory per rank per parameter against",
            "  Megatron's accounting (docs/parallel.md)");

    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("bench-dp", USAGE, argv, args -> {
            bench(args);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    static void bench(String[] argv) throws Exception {
        BenchArgs a = new BenchArgs("bench-dp", argv, Set.of("dp", "layers", "width", "heads", "seq", "batch", "micro", "vocab",
                "family", "steps", "bucket-mb", "rounds", "precision"), Set.of("distributed-optimizer", "overlap-param-gather"));
        Precision precision = Precision.parse(a.string("precision", "fp32"));
        if (precision != Precision.FP32 && precision != Precision.BF16) {
            throw new IllegalArgumentException("--precision must be fp32 or bf16, got " + precision.label());
        }
        int dp = a.integer("dp", 2);
        int layers = a.integer("layers", 8);
        int seq = a.integer("seq", 64);
        int batch = a.integer("batch", 2);
        int micro = a.integer("micro", 2);
        int steps = a.integer("steps", 3);
        int rounds = a.integer("rounds", 3);
        double bucketMb;
        try {
            bucketMb = Double.parseDouble(a.string("bucket-mb", "1"));
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--bucket-mb must be a number of MiB, got '" + a.string("bucket-mb", "") + "'");
        }
        boolean distopt = a.flag("distributed-optimizer");
        boolean paramGather = a.flag("overlap-param-gather");
        if (paramGather && !distopt) {
            throw new IllegalArgumentException("--overlap-param-gather needs --distributed-optimizer (only it all-gathers parameters)");
        }
        if (dp < 2 || steps < 2 || rounds < 1 || !(bucketMb > 0)) {
            throw new IllegalArgumentException("--dp must be >= 2, --steps >= 2, --rounds >= 1 and --bucket-mb > 0");
        }
        ModelConfig cfg = BenchArgs.model(a.string("family", "gpt2"), layers, a.integer("width", 256), a.integer("heads", 4), seq,
                a.integer("vocab", 8192));
        long bucket = (long) (bucketMb * (1 << 20) / 4);
        System.out.printf(Locale.ROOT, "bench-dp: %s L=%d C=%d T=%d, dp=%d, micro-batch %d x %d micro-batches per rank, "
                        + "%s, %s; %d rounds alternating overlap off and on, each %d steps (the first a warm-up); medians; %d cores%n",
                cfg.family().name().toLowerCase(Locale.ROOT), layers, cfg.hidden(), seq, dp, batch, micro,
                distopt ? "distributed optimizer" : "all-reduce", precision.label(), rounds, steps, Runtime.getRuntime().availableProcessors());
        List<Run> offs = new ArrayList<>();
        List<Run> ons = new ArrayList<>();
        List<Run> gathers = new ArrayList<>();
        for (int r = 0; r < rounds; r++) { // alternating: a machine whose load changes affects all alike
            offs.add(run(cfg, dp, batch, seq, micro, steps, new DataParallel.Config(distopt, bucket, false), precision));
            ons.add(run(cfg, dp, batch, seq, micro, steps, new DataParallel.Config(distopt, bucket, true), precision));
            if (paramGather) {
                gathers.add(run(cfg, dp, batch, seq, micro, steps, new DataParallel.Config(distopt, bucket, true, true), precision));
            }
        }
        Run off = median(offs);
        Run on = median(ons);
        System.out.println("overlap_grad_reduce  buckets  step ms  reduce ms/step  waited ms/step  hidden");
        for (Run r : new Run[] {off, on}) {
            System.out.printf(Locale.ROOT, "%-19s %8d %8.1f %15.1f %15.1f %7.0f%%%n", r == off ? "off" : "on", r.buckets,
                    r.stepMs, r.reduceMs, r.waitMs, Math.max(0, 100 * (1 - r.waitMs / r.reduceMs)));
        }
        System.out.printf(Locale.ROOT, "step time overlap on / off (medians): %.3f%n%n", on.stepMs / off.stepMs);
        if (paramGather) {
            Run g = median(gathers);
            System.out.println("overlap_param_gather (with overlap_grad_reduce)  step ms  gather ms/step  waited ms/step  hidden");
            System.out.printf(Locale.ROOT, "%-46s %8.1f %15.1f %15.1f %7.0f%%%n", "on", g.stepMs, g.gatherMs, g.gatherWaitMs,
                    Math.max(0, 100 * (1 - g.gatherWaitMs / g.gatherMs)));
            System.out.printf(Locale.ROOT, "step time overlap_param_gather on / off (medians, both with overlap_grad_reduce): %.3f%n%n",
                    g.stepMs / on.stepMs);
        }

        System.out.println("memory per rank (bytes per parameter: parameters + gradients + optimizer state; "
                + "fp32 staging: workspace, one unit's weights widened)");
        System.out.println("setup                          dp   params   grads  optimizer   total  formula  measured/formula  fp32 staging");
        for (Object[] c : new Object[][] {{Precision.FP32, false, 1}, {Precision.BF16, false, 1}, {Precision.FP32, true, dp},
                {Precision.BF16, true, dp}}) {
            Precision p = (Precision) c[0];
            boolean sharded = (Boolean) c[1];
            int n = (Integer) c[2];
            Run r = run(cfg, n, batch, seq, micro, 1, new DataParallel.Config(sharded, 0, true), p);
            // Megatron's accounting: 16-bit weights 2 bytes, fp32 gradients 4, Adam's m and v 8 and, in mixed precision,
            // the fp32 master 4; the distributed optimizer shards the last two over dp
            double formula = sharded ? (p.isReduced() ? 2 + 4 + 12.0 / n : 4 + 4 + 8.0 / n) : (p.isReduced() ? 18 : 16);
            double per = r.params + r.grads + r.optimizer;
            System.out.printf(Locale.ROOT, "%-30s %2d %8.2f %7.2f %10.2f %7.2f %8.2f %17.3f %13.2f%n",
                    p.label() + (sharded ? ", distributed optimizer" : ", plain"), n, r.params, r.grads, r.optimizer, per, formula,
                    per / formula, r.staging);
        }
    }

    /** Each timing's median over rounds (memory and buckets are the same in every round). */
    private static Run median(List<Run> runs) {
        Run r = runs.get(0);
        return new Run(r.buckets(), BenchArgs.median(runs.stream().mapToDouble(Run::stepMs).toArray()),
                BenchArgs.median(runs.stream().mapToDouble(Run::reduceMs).toArray()),
                BenchArgs.median(runs.stream().mapToDouble(Run::waitMs).toArray()),
                BenchArgs.median(runs.stream().mapToDouble(Run::gatherMs).toArray()),
                BenchArgs.median(runs.stream().mapToDouble(Run::gatherWaitMs).toArray()), r.params(), r.grads(), r.optimizer(),
                r.staging());
    }

    /** One configuration's figures (the slowest rank's step, rank 0's memory per parameter). */
    record Run(int buckets, double stepMs, double reduceMs, double waitMs, double gatherMs, double gatherWaitMs, double params,
               double grads, double optimizer, double staging) {
    }

    private static Run run(ModelConfig cfg, int dp, int batch, int seq, int micro, int steps, DataParallel.Config ddp,
                           Precision precision) throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(dp, 60_000);
        byte[] secret = "bench-dp-secret-0123456789abcdef".getBytes(StandardCharsets.UTF_8);
        ExecutorService pool = Executors.newFixedThreadPool(dp);
        Blas.setThreads(1);
        try {
            List<Future<double[]>> fs = new ArrayList<>();
            for (int r = 0; r < dp; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (TcpCommunicator world = TcpCommunicator.create(rank, dp, rv.forRank(rank), secret,
                            TcpOptions.loopback().withTimeouts(60_000, 600_000));
                         ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(dp, 1, 1, 1, 1, 1), world);
                         CpuDevice device = new CpuDevice()) {
                        RankContext ctx = new RankContext(device, TensorParallel.none(), precision, null, new DataParallel(pg.dp(), ddp));
                        Transformer m = new Transformer(cfg, ctx);
                        m.initialize(1);
                        Trainer.Options d = Trainer.Options.defaults(batch, LrSchedule.constant(1e-3));
                        Trainer tr = new Trainer(m, BenchArgs.randomSamples(cfg, seq), new Trainer.Options(batch, micro,
                                d.schedule(), d.beta1(), d.beta2(), d.eps(), d.weightDecay(), d.gradClip()));
                        tr.step(); // warm-up; learns which parameters complete together
                        long[] before = m.dataParallel().reductionNanos();
                        long[] gatherBefore = m.dataParallel().paramGatherStats();
                        double[] times = new double[steps - 1];
                        for (int s = 0; s < steps - 1; s++) {
                            long t0 = System.nanoTime();
                            tr.step();
                            times[s] = (System.nanoTime() - t0) / 1e6;
                        }
                        long[] after = m.dataParallel().reductionNanos();
                        long[] gatherAfter = m.dataParallel().paramGatherStats();
                        int timed = Math.max(1, steps - 1);
                        double n = m.params().params().stream().mapToLong(org.sparkatron.model.ParameterSet.Param::numel).sum(); // unpadded
                        double[] out = new double[6 + times.length];
                        out[0] = m.dataParallel().plan().buckets().size();
                        out[1] = (after[0] - before[0]) / 1e6 / timed;
                        out[2] = (after[1] - before[1]) / 1e6 / timed;
                        out[3] = m.weightStagingBytes() / n;
                        out[4] = (gatherAfter[1] - gatherBefore[1]) / 1e6 / timed; // deferred gathers: ran on the lane
                        out[5] = (gatherAfter[2] - gatherBefore[2]) / 1e6 / timed; // ... and waited for by the forward
                        System.arraycopy(times, 0, out, 6, times.length);
                        double[] mem = {device.memory().requested(MemoryKind.PARAMETERS) / n,
                                device.memory().requested(MemoryKind.GRADIENTS) / n, device.memory().requested(MemoryKind.OPTIMIZER) / n};
                        double[] all = new double[out.length + 3];
                        System.arraycopy(mem, 0, all, 0, 3);
                        System.arraycopy(out, 0, all, 3, out.length);
                        m.close();
                        return all;
                    }
                }));
            }
            double[] first = null;
            double[] slowest = new double[Math.max(0, steps - 1)];
            for (Future<double[]> f : fs) {
                double[] o = f.get();
                first = first == null ? o : first;
                for (int s = 0; s < slowest.length; s++) {
                    slowest[s] = Math.max(slowest[s], o[9 + s]);
                }
            }
            double step = slowest.length == 0 ? 0 : BenchArgs.median(slowest);
            return new Run((int) first[3], step, first[4], first[5], first[7], first[8], first[0], first[1], first[2], first[6]);
        } finally {
            pool.shutdownNow();
        }
    }
}
