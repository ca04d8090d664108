package org.sparkatron.checkpoint;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.precision.Precision;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench-ckpt [--tp 1,2] [--layers 6] [--width 384] [--vocab 50304] [--seq 64] [--batch 2]
 * [--rounds 3] [--dir DIR] [--no-peer]}: checkpoint save and load throughput (MB/s per rank) and the training
 * time lost per checkpoint, for the GPT-2-style bench model on local disk, at each TP size (ranks are
 * threads of this JVM connected as Spark ranks are, DP = 1). Each rank trains one step (so AdamW's
 * moments are real), times two more steps, then {@code rounds} x (blocking save; load into a fresh model and
 * optimizer; at TP=1 the peer; then an asynchronous save). A blocking save stops training on every rank
 * until the commit, so the time it loses is its wall time (the slowest rank's). An asynchronous save
 * ({@link AsyncCheckpointer}) is started after a step and training goes on until it commits; per round:
 * three plain steps (the round's baseline), the save's start (the copy) and its per-step polls (the time
 * training is blocked), and the extra time of the steps that ran while the files were written, over the
 * baseline (the write competes with training for cores and memory bandwidth). Time lost = blocked +
 * extra, in steps of the baseline. The peer, alternated with our rounds: {@code torch.save} (to a file that
 * is fsynced, as our saves are) and {@code torch.load} of a state dict with the same tensors' element
 * counts, one process, with /usr/bin/python3 when torch is importable ({@link TorchSavePeer}). Loads, ours and the
 * peer's alike, three times per round, each into fresh memory: with the files just dropped from the page cache
 * ({@link PageCache}; the first read after the save), dropped again (from disk, read once before: on a VM whose
 * host caches what the guest read or wrote through its cache, this is what equalises our direct-I/O files with the
 * peer's buffered ones), and from the page cache. Medians over the rounds.
 */
public final class CheckpointBench {
    private static final byte[] SECRET = "sparkatron-bench-ckpt-secret-0123".getBytes(StandardCharsets.UTF_8);

    private CheckpointBench() {
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-ckpt [--tp 1,2] [--rounds 3] [--threads 1] [--dir DIR] [--no-peer]",
            "         [--layers 6] [--width 384] [--heads 6] [--vocab 50304] [--seq 64] [--batch 2]",
            "  sharded checkpoint save and load time against the training step, per TP size (docs/checkpoints.md)");

    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("bench-ckpt", USAGE, argv, args -> {
            Map<String, String> a = new LinkedHashMap<>();
            List<String> known = List.of("tp", "layers", "width", "heads", "vocab", "seq", "batch", "rounds", "dir", "no-peer", "threads");
            for (int i = 0; i < args.length; i++) {
                String k = args[i].startsWith("--") ? args[i].substring(2) : null;
                if (k == null || !known.contains(k)) {
                    throw new org.sparkatron.cli.Cli.UsageException("unknown argument '" + args[i] + "' (options: --"
                            + String.join(", --", known) + ")");
                }
                if (!k.equals("no-peer") && i + 1 >= args.length) {
                    throw new org.sparkatron.cli.Cli.UsageException("option --" + k + " needs a value");
                }
                a.put(k, k.equals("no-peer") ? "true" : args[++i]);
            }
            run(a, System.out);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    /** Per TP size: the medians of the rounds. */
    record Figures(int tp, double stepS, double saveS, double loadFirstS, double loadColdS, double loadWarmS, long bytesPerRank, long totalBytes,
                   double asyncBlockedS, double asyncExtraS, double asyncSteps, double asyncBaseS, double asyncCopyS,
                   int residentAfterEviction, int samples, Peer peer) {
    }

    /** The torch peer's medians over the rounds, and the most pages found cached after an eviction. */
    record Peer(double saveS, double loadFirstS, double loadColdS, double loadWarmS, long bytes, int residentAfterEviction) {
    }

    static void run(Map<String, String> a, PrintStream out) throws Exception {
        int layers = Integer.parseInt(a.getOrDefault("layers", "6"));
        int width = Integer.parseInt(a.getOrDefault("width", "384"));
        int heads = Integer.parseInt(a.getOrDefault("heads", "6"));
        int vocab = Integer.parseInt(a.getOrDefault("vocab", "50304"));
        int seq = Integer.parseInt(a.getOrDefault("seq", "64"));
        int batch = Integer.parseInt(a.getOrDefault("batch", "2"));
        int rounds = Integer.parseInt(a.getOrDefault("rounds", "3"));
        Blas.setThreads(Integer.parseInt(a.getOrDefault("threads", "1"))); // per rank; process-wide, same for all ranks
        int[] tps = Arrays.stream(a.getOrDefault("tp", "1,2").split(",")).mapToInt(Integer::parseInt).toArray();
        Path dir = a.containsKey("dir") ? Path.of(a.get("dir")) : Files.createTempDirectory("sparkatron-bench-ckpt");
        ModelConfig cfg = new ModelConfig(ModelConfig.Family.GPT2, layers, width, heads, heads, 4 * width, vocab, seq,
                1e-5f, 0, true, ModelConfig.DEFAULT_VOCAB_MULTIPLE);
        out.printf(Locale.ROOT, "work: GPT-2-style L=%d C=%d V=%d, fp32 weights + AdamW m and v, batch %d x %d, local disk %s, "
                + "median of %d rounds%n", layers, width, vocab, batch, seq, dir, rounds);
        List<Long> tensorSizes = new ArrayList<>();
        Transformer probe = new Transformer(cfg, new CpuDevice());
        for (var p : probe.params().params()) {
            for (int copy = 0; copy < 3; copy++) { // weights, m, v
                tensorSizes.add(p.numel());
            }
        }
        boolean peerWanted = !a.containsKey("no-peer");
        for (int tp : tps) {
            Figures f = measure(cfg, tp, batch, seq, rounds, dir.resolve("tp" + tp),
                    peerWanted && tp == 1 ? tensorSizes : null, dir.resolve("peer.pt"));
            double mb = f.bytesPerRank() / 1e6;
            out.printf(Locale.ROOT, "TP=%d: checkpoint %.1f MB (%.1f MB per rank); save %.3f s = %.0f MB/s per rank; training step %.3f s; "
                            + "time lost per checkpoint %.3f s (%.2f steps)%n", tp, f.totalBytes() / 1e6, mb, f.saveS(), mb / f.saveS(),
                    f.stepS(), f.saveS(), f.saveS() / f.stepS());
            out.printf(Locale.ROOT, "TP=%d load per rank: first after the save, evicted from the page cache %.3f s = %.0f MB/s; evicted again "
                            + "(from disk) %.3f s = %.0f MB/s; from the page cache %.3f s = %.0f MB/s%n", tp, f.loadFirstS(),
                    mb / f.loadFirstS(), f.loadColdS(), mb / f.loadColdS(), f.loadWarmS(), mb / f.loadWarmS());
            double lost = f.asyncBlockedS() + f.asyncExtraS();
            out.printf(Locale.ROOT, "TP=%d async: training blocked %.3f s per checkpoint (copy %.3f s, then polls and commit), steps "
                            + "during the write %.1f, their extra time over the round's step (%.3f s) %.3f s; time lost per checkpoint "
                            + "%.3f s (%.2f steps) against %.2f steps blocking%n", tp, f.asyncBlockedS(), f.asyncCopyS(), f.asyncSteps(), f.asyncBaseS(),
                    f.asyncExtraS(), lost, lost / f.asyncBaseS(), f.saveS() / f.stepS());
            if (peerWanted && tp == 1) {
                Peer peer = f.peer();
                if (peer == null) {
                    out.println("peer: skipped (/usr/bin/python3 with torch not available)");
                } else {
                    double peerMb = peer.bytes() / 1e6;
                    out.printf(Locale.ROOT, "peer torch.save/torch.load (one process, %.1f MB, alternated with our rounds): save %.3f s = "
                                    + "%.0f MB/s; load first after the save, evicted %.3f s = %.0f MB/s; evicted again (from disk) %.3f s = "
                                    + "%.0f MB/s; from the page cache %.3f s = %.0f MB/s%n", peerMb, peer.saveS(), peerMb / peer.saveS(),
                            peer.loadFirstS(), peerMb / peer.loadFirstS(), peer.loadColdS(), peerMb / peer.loadColdS(), peer.loadWarmS(),
                            peerMb / peer.loadWarmS());
                    out.printf(Locale.ROOT, "ratio ours/peer at TP=1 (throughput): save %.2f; load from disk %.2f, from the page cache %.2f "
                                    + "(first load after the save %.2f)%n", (mb / f.saveS()) / (peerMb / peer.saveS()),
                            (mb / f.loadColdS()) / (peerMb / peer.loadColdS()), (mb / f.loadWarmS()) / (peerMb / peer.loadWarmS()),
                            (mb / f.loadFirstS()) / (peerMb / peer.loadFirstS()));
                }
            }
            out.printf(Locale.ROOT, "TP=%d page cache after each eviction (dd iflag=nocache), most over the rounds: ours %d of %d sampled "
                    + "pages resident%s%n", tp, f.residentAfterEviction(), f.samples(), f.peer() == null ? ""
                    : ", peer's " + f.peer().residentAfterEviction() + " of " + PageCache.samples(1));
        }
    }

    /**
     * One TP size; with {@code peerSizes} (TP=1 only) a torch peer round follows each of ours. Each round's load
     * runs twice into a fresh model and optimizer: first with the checkpoint's files dropped from the page cache
     * (rank 0 evicts them between barriers), then again, from the cache.
     */
    private static Figures measure(ModelConfig cfg, int tp, int batch, int seq, int rounds, Path root, List<Long> peerSizes,
                                   Path peerFile) throws Exception {
        List<Figures> perRank = ranks(tp, (rank, world) -> {
            Transformer m = new Transformer(cfg, new RankContext(new CpuDevice(), new TensorParallel(world, false), Precision.FP32));
            m.initialize(1);
            SplittableRandom rng = new SplittableRandom(7);
            List<int[]> rows = new ArrayList<>();
            for (int b = 0; b < batch * 4; b++) {
                rows.add(rng.ints(seq + 1, 0, cfg.vocabSize()).toArray());
            }
            Trainer.Options opt = new Trainer.Options(batch, 1, LrSchedule.constant(3e-4), 0.9f, 0.999f, 1e-8f, 0.1f, 1.0f);
            Trainer trainer = new Trainer(m, PackedSamples.perSequence(rows, 0), opt);
            trainer.step(); // warm-up; AdamW moments become non-zero
            double[] steps = new double[2];
            for (int i = 0; i < steps.length; i++) {
                long t0 = System.nanoTime();
                trainer.step();
                steps[i] = (System.nanoTime() - t0) / 1e9;
            }
            // keep every round's checkpoint: the save times measure writing and committing, not deleting the
            // previous checkpoint (keep-K cleanup), which the peer has no counterpart of
            DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), 2 * rounds + 1);
            AsyncCheckpointer saver = new AsyncCheckpointer(dc, true); // one per rank, as in training: staging reused
            double[] save = new double[rounds];
            double[] loadFirst = new double[rounds];
            double[] loadCold = new double[rounds];
            double[] loadWarm = new double[rounds];
            double[] blocked = new double[rounds];
            double[] copied = new double[rounds];
            double[] extra = new double[rounds];
            double[] during = new double[rounds];
            double[] base = new double[rounds];
            List<TorchSavePeer.Round> peer = new ArrayList<>();
            int resident = 0;
            int samples = 0;
            long bytes = 0;
            long total = 0;
            for (int r = 0; r < rounds; r++) {
                trainer.optimizer().setStep(100 + r); // a new step directory each round
                world.barrier();
                long t0 = System.nanoTime();
                String saved = dc.save(world, 1, m, trainer.optimizer(), trainer.data().consumed(), Map.of());
                save[r] = (System.nanoTime() - t0) / 1e9;
                bytes = Files.size(Path.of(saved, String.format(Locale.ROOT, "model-tp%02d-of%02d.safetensors", rank, tp)))
                        + Files.size(Path.of(saved, String.format(Locale.ROOT, "optim-tp%02d-of%02d.safetensors", rank, tp)));
                List<Path> files;
                try (var list = Files.list(Path.of(saved))) {
                    files = list.filter(f -> f.toString().endsWith(".safetensors")).sorted().toList();
                }
                total = files.stream().mapToLong(f -> f.toFile().length()).sum();
                samples = PageCache.samples(files.size());
                resident = Math.max(resident, evict(world, rank, files));
                loadFirst[r] = timedLoad(cfg, world, dc, saved, opt, m);
                resident = Math.max(resident, evict(world, rank, files));
                loadCold[r] = timedLoad(cfg, world, dc, saved, opt, m);
                loadWarm[r] = timedLoad(cfg, world, dc, saved, opt, m);
                if (peerSizes != null) {
                    TorchSavePeer.Round p = TorchSavePeer.round(peerSizes, peerFile);
                    if (p != null) {
                        peer.add(p);
                    }
                }
                double[] a = asyncRound(world, trainer, saver, 200 + r);
                copied[r] = a[4];
                base[r] = a[0];
                blocked[r] = a[1];
                during[r] = a[2];
                extra[r] = a[3];
            }
            saver.close();
            world.barrier();
            if (rank == 0) {
                for (long s : dc.committedSteps()) {
                    dc.storage().delete(dc.dir(s));
                }
            }
            Peer peerMedians = peer.isEmpty() ? null : new Peer(median(peer, TorchSavePeer.Round::saveS),
                    median(peer, TorchSavePeer.Round::loadFirstS), median(peer, TorchSavePeer.Round::loadColdS), median(peer, TorchSavePeer.Round::loadWarmS), peer.get(0).bytes(),
                    peer.stream().mapToInt(TorchSavePeer.Round::residentAfterEviction).max().orElse(0));
            return new Figures(tp, median(steps), median(save), median(loadFirst), median(loadCold), median(loadWarm), bytes, total, median(blocked),
                    median(extra), median(during), median(base), median(copied), resident, samples, peerMedians);
        });
        Figures r0 = perRank.get(0);
        java.util.function.ToDoubleFunction<java.util.function.ToDoubleFunction<Figures>> worst =
            g -> perRank.stream().mapToDouble(g).max().orElse(0); // the slowest rank: everyone waits for it
        return new Figures(tp, worst.applyAsDouble(Figures::stepS), worst.applyAsDouble(Figures::saveS),
                worst.applyAsDouble(Figures::loadFirstS), worst.applyAsDouble(Figures::loadColdS), worst.applyAsDouble(Figures::loadWarmS),
                (long) worst.applyAsDouble(Figures::bytesPerRank), r0.totalBytes(), worst.applyAsDouble(Figures::asyncBlockedS),
                worst.applyAsDouble(Figures::asyncExtraS), worst.applyAsDouble(Figures::asyncSteps),
                worst.applyAsDouble(Figures::asyncBaseS), worst.applyAsDouble(Figures::asyncCopyS), r0.residentAfterEviction(),
                r0.samples(), r0.peer());
    }

    /** Rank 0 drops {@code files} from the page cache between barriers; returns the pages found cached after (rank 0). */
    private static int evict(Communicator world, int rank, List<Path> files) throws IOException, InterruptedException {
        world.barrier();
        int resident = 0;
        if (rank == 0) {
            PageCache.evict(files);
            resident = PageCache.residentSamples(files);
        }
        world.barrier();
        return resident;
    }

    /** A load of {@code dir} into a fresh model and optimizer, timed between barriers; checks a weight against {@code m}'s. */
    private static double timedLoad(ModelConfig cfg, Communicator world, DistributedCheckpoint dc, String dir, Trainer.Options opt,
                                    Transformer m) throws IOException {
        Transformer fresh = new Transformer(cfg, new RankContext(new CpuDevice(), new TensorParallel(world, false), Precision.FP32));
        AdamW adam = new AdamW(fresh.params(), fresh.kernels(), opt.beta1(), opt.beta2(), opt.eps(), opt.weightDecay());
        world.barrier();
        long t0 = System.nanoTime();
        dc.load(dir, fresh, adam);
        double s = (System.nanoTime() - t0) / 1e9;
        if (fresh.params().weights().floats().get(17) != m.params().weights().floats().get(17)) {
            throw new IllegalStateException("loaded weights differ from the saved ones");
        }
        return s;
    }

    /**
     * One asynchronous save between training steps: three plain steps (the baseline), the save started as
     * step {@code step}, then steps with a poll after each until it commits. Returns {baseline step s, time
     * blocked in start and polls s, steps run during the write, their time beyond the baseline s}.
     */
    private static double[] asyncRound(Communicator world, Trainer trainer, AsyncCheckpointer saver, long step) throws Exception {
        double[] plain = new double[3];
        for (int i = 0; i < plain.length; i++) {
            world.barrier();
            long t0 = System.nanoTime();
            trainer.step();
            plain[i] = (System.nanoTime() - t0) / 1e9;
        }
        double baseline = median(plain);
        trainer.optimizer().setStep(step);
        world.barrier();
        long t0 = System.nanoTime();
        saver.start(world, 1, trainer.model(), trainer.optimizer(), trainer.data().consumed(), Map.of());
        double copy = (System.nanoTime() - t0) / 1e9;
        double polls = 0;
        double stepsTime = 0;
        int steps = 0;
        String done = null;
        while (done == null) {
            long s0 = System.nanoTime();
            trainer.step();
            stepsTime += (System.nanoTime() - s0) / 1e9;
            steps++;
            long p0 = System.nanoTime();
            done = steps < 1000 ? saver.poll(world) : saver.finish(world);
            polls += (System.nanoTime() - p0) / 1e9;
        }
        long[] w = saver.lastWriteTimes();
        System.out.printf(Locale.ROOT, "  async round: baseline %.3f s, copy %.3f s, polls %.3f s, %d steps %.3f s, writer wall %.3f s cpu %.3f s, load %s%n",
                baseline, copy, polls, steps, stepsTime, w[0] / 1e9, w[1] / 1e9, Files.readString(Path.of("/proc/loadavg")).trim());
        return new double[] {baseline, copy + polls, steps, stepsTime - steps * baseline, copy}; // negative extra: noise
    }

    private static <T> double median(List<T> rows, java.util.function.ToDoubleFunction<T> f) {
        return median(rows.stream().mapToDouble(f).toArray());
    }

    private static double median(double[] xs) {
        double[] s = xs.clone();
        Arrays.sort(s);
        return s.length % 2 == 1 ? s[s.length / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    }

    private interface Body<T> {
        T run(int rank, Communicator world) throws Exception;
    }

    /** {@code n} ranks as threads with loopback TCP communicators (one: a self communicator). */
    private static <T> List<T> ranks(int n, Body<T> body) throws Exception {
        if (n == 1) {
            try (Communicator c = new org.sparkatron.comm.SelfCommunicator()) {
                return List.of(body.run(0, c));
            }
        }
        InProcessRendezvous rv = new InProcessRendezvous(n, 60_000);
        TcpOptions opts = TcpOptions.loopback().withTimeouts(60_000, 600_000);
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (Communicator c = org.sparkatron.comm.Communicators.connect(rank, n, rv.forRank(rank), SECRET, opts)) {
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
            for (Future<T> f : fs) {
                out.add(f.get());
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
