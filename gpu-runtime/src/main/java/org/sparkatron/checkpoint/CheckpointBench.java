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
 * threads of this JVM with loopback TCP communicators, DP = 1). Each rank trains one step (so AdamW's
 * moments are real), times two more steps, then {@code rounds} x (save; load into a fresh model and
 * optimizer). Saving blocks training on every rank until the commit, so the time lost per checkpoint is the
 * save's wall time (the slowest rank's). The peer, in the same command: {@code torch.save} (to a file that
 * is fsynced, as our saves are) and {@code torch.load} of a state dict with the same tensors' element
 * counts, one process, with /usr/bin/python3 when torch is importable. Medians over the rounds; loads
 * follow saves, so both sides read from the page cache.
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
    record Figures(int tp, double stepS, double saveS, double loadS, long bytesPerRank, long totalBytes) {
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
        for (int tp : tps) {
            Figures f = measure(cfg, tp, batch, seq, rounds, dir.resolve("tp" + tp));
            if (tp == tps[0]) {
                Transformer probe = new Transformer(cfg, new CpuDevice());
                for (var p : probe.params().params()) {
                    for (int copy = 0; copy < 3; copy++) { // weights, m, v
                        tensorSizes.add(p.numel());
                    }
                }
            }
            double mb = f.bytesPerRank() / 1e6;
            out.printf(Locale.ROOT, "TP=%d: checkpoint %.1f MB (%.1f MB per rank); save %.3f s = %.0f MB/s per rank; "
                            + "load %.3f s = %.0f MB/s per rank; training step %.3f s; time lost per checkpoint %.3f s (%.2f steps)%n",
                    tp, f.totalBytes() / 1e6, mb, f.saveS(), mb / f.saveS(), f.loadS(), mb / f.loadS(), f.stepS(), f.saveS(),
                    f.saveS() / f.stepS());
            if (!a.containsKey("no-peer") && tp == 1) {
                double[] peer = torchPeer(tensorSizes, dir.resolve("peer.pt"), rounds);
                if (peer == null) {
                    out.println("peer: skipped (/usr/bin/python3 with torch not available)");
                } else {
                    double peerMb = peer[2] / 1e6;
                    out.printf(Locale.ROOT, "peer torch.save/torch.load (one process, %.1f MB): save %.3f s = %.0f MB/s, load %.3f s = %.0f MB/s; "
                                    + "ratio ours/peer at TP=1 (throughput): save %.2f, load %.2f%n", peerMb, peer[0], peerMb / peer[0],
                            peer[1], peerMb / peer[1], (mb / f.saveS()) / (peerMb / peer[0]), (mb / f.loadS()) / (peerMb / peer[1]));
                }
            }
        }
    }

    private static Figures measure(ModelConfig cfg, int tp, int batch, int seq, int rounds, Path root) throws Exception {
        List<double[]> perRank = ranks(tp, (rank, world) -> {
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
            DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), rounds + 1);
            double[] save = new double[rounds];
            double[] load = new double[rounds];
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
                try (var files = Files.list(Path.of(saved))) {
                    total = files.mapToLong(p -> p.toFile().length()).sum();
                }
                Transformer fresh = new Transformer(cfg, new RankContext(new CpuDevice(), new TensorParallel(world, false), Precision.FP32));
                AdamW adam = new AdamW(fresh.params(), fresh.kernels(), opt.beta1(), opt.beta2(), opt.eps(), opt.weightDecay());
                world.barrier();
                t0 = System.nanoTime();
                dc.load(saved, fresh, adam);
                load[r] = (System.nanoTime() - t0) / 1e9;
                if (fresh.params().weights().floats().get(17) != m.params().weights().floats().get(17)) {
                    throw new IllegalStateException("loaded weights differ from the saved ones");
                }
            }
            world.barrier();
            if (rank == 0) {
                for (long s : dc.committedSteps()) {
                    dc.storage().delete(dc.dir(s));
                }
            }
            return new double[] {median(steps), median(save), median(load), bytes, total};
        });
        double step = 0;
        double save = 0;
        double load = 0;
        long bytes = 0;
        for (double[] r : perRank) { // the slowest rank: everyone waits for it
            step = Math.max(step, r[0]);
            save = Math.max(save, r[1]);
            load = Math.max(load, r[2]);
            bytes = Math.max(bytes, (long) r[3]);
        }
        return new Figures(tp, step, save, load, bytes, (long) perRank.get(0)[4]);
    }

    /** torch.save (fsynced) and torch.load medians and the bytes written, or null without torch. */
    private static double[] torchPeer(List<Long> sizes, Path file, int rounds) throws IOException, InterruptedException {
        String script = String.join("\n",
                "import sys, os, time, json, statistics",
                "import torch",
                "torch.set_num_threads(1)",
                "sizes = json.loads(sys.argv[1]); path = sys.argv[2]; rounds = int(sys.argv[3])",
                "g = torch.Generator().manual_seed(0)",
                "sd = {'t%d' % i: torch.randn(n, generator=g) for i, n in enumerate(sizes)}",
                "save, load = [], []",
                "for r in range(rounds):",
                "    t = time.perf_counter()",
                "    with open(path, 'wb') as f:",
                "        torch.save(sd, f); f.flush(); os.fsync(f.fileno())",
                "    save.append(time.perf_counter() - t)",
                "    t = time.perf_counter()",
                "    back = torch.load(path)",
                "    load.append(time.perf_counter() - t)",
                "    assert torch.equal(back['t0'], sd['t0'])",
                "print(statistics.median(save), statistics.median(load), os.path.getsize(path))",
                "os.remove(path)");
        if (!Files.isExecutable(Path.of("/usr/bin/python3"))) {
            return null;
        }
        Process p = new ProcessBuilder("/usr/bin/python3", "-c", script, sizes.toString(), file.toString(), String.valueOf(rounds))
                .redirectErrorStream(true).start();
        String outText = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        if (!p.waitFor(600, TimeUnit.SECONDS) || p.exitValue() != 0) {
            if (outText.contains("No module named 'torch'")) {
                return null;
            }
            throw new IOException("the torch peer failed: " + outText);
        }
        String[] last = outText.lines().reduce((x, y) -> y).orElse("").trim().split("\\s+");
        return new double[] {Double.parseDouble(last[0]), Double.parseDouble(last[1]), Double.parseDouble(last[2])};
    }

    private static double median(double[] xs) {
        double[] s = xs.clone();
        Arrays.sort(s);
        return s.length % 2 == 1 ? s[s.length / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    }

    private interface Body {
        double[] run(int rank, Communicator world) throws Exception;
    }

    /** {@code n} ranks as threads with loopback TCP communicators (one: a self communicator). */
    private static List<double[]> ranks(int n, Body body) throws Exception {
        if (n == 1) {
            try (Communicator c = new org.sparkatron.comm.SelfCommunicator()) {
                return List.of(body.run(0, c));
            }
        }
        InProcessRendezvous rv = new InProcessRendezvous(n, 60_000);
        TcpOptions opts = TcpOptions.loopback().withTimeouts(60_000, 600_000);
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<double[]>> fs = new ArrayList<>();
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
            List<double[]> out = new ArrayList<>();
            for (Future<double[]> f : fs) {
                out.add(f.get());
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
