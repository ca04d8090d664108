package org.sparkatron.cli;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench}: the CPU training-step benchmark of BENCHMARKS.md. Times our fp32 step
 * (forward, backward, clip at 1.0, AdamW) on a GPT-2-style model, measures this machine's sgemm rate in
 * the same run, then runs the PyTorch eager peer on the same work (if the system Python has torch) and
 * prints both, their ratio and MFU. The two run one after the other, never at the same time, alternating
 * over several rounds so that both see the same machine load; the kept figures are medians over rounds.
 *
 * <p>FLOPs convention (llm.c, as the peer prints): model FLOPs per step = 6 N B T + 6 L C T (B T), N the
 * parameter count including the embedding used as output layer; no recomputation counted.
 */
final class BenchCommand {
    private BenchCommand() {
    }

    static void run(Args a, PrintStream out) throws java.io.IOException {
        int layers = a.integer("layers", 6);
        int width = a.integer("width", 384);
        int heads = a.integer("heads", 6);
        int seq = a.integer("seq", 256);
        int vocab = a.integer("vocab", 50304);
        int batch = a.integer("batch", 4);
        int steps = a.integer("steps", 5);
        int threads = a.integer("threads", 2);
        int rounds = a.integer("rounds", 3);
        boolean noPeer = a.flag("no-peer");
        boolean profile = a.flag("profile");
        a.rejectUnknown();
        Blas.setThreads(threads);

        ModelConfig cfg = new ModelConfig(ModelConfig.Family.GPT2, layers, width, heads, heads, 4 * width, vocab, seq,
                1e-5f, 0, true, ModelConfig.DEFAULT_VOCAB_MULTIPLE);
        org.sparkatron.bench.KernelProfile kernels = profile ? new org.sparkatron.bench.KernelProfile() : null;
        Transformer model = new Transformer(cfg, profile ? CpuDevice.withKernels(kernels::wrap) : new CpuDevice());
        model.initialize(0);
        SplittableRandom rng = new SplittableRandom(0);
        List<int[]> rows = new ArrayList<>();
        for (int b = 0; b < batch; b++) {
            rows.add(rng.ints(seq + 1, 0, vocab).toArray());
        }
        Trainer trainer = new Trainer(model, PackedSamples.perSequence(rows, 0), new Trainer.Options(batch, 1,
                LrSchedule.constant(3e-4), 0.9f, 0.999f, 1e-8f, 0.1f, 1.0f));
        long n = Sparkatron.savedParameters(model);
        double flops = org.sparkatron.train.ModelFlops.perStep(model.config(), seq, batch);
        out.printf(Locale.ROOT, "work: GPT-2-style L=%d C=%d H=%d T=%d V=%d, batch %d x %d, fp32, %d threads, params=%d%n",
                layers, width, heads, seq, vocab, batch, seq, threads, n);
        out.printf(Locale.ROOT, "FLOPs per step (6N*BT + 6*L*C*T*BT): %.1f GFLOP; each round: our median of %d steps "
                + "(after 2 warm-up steps in round 1), the peer's median of %d, sgemm 1024^3 measured beside each%n",
                flops / 1e9, steps, steps);
        for (int i = 0; i < 2; i++) {
            trainer.step();
        }
        if (profile) { // where the step's time goes, by kernel, against the sgemm rate measured right after
            kernels.reset();
            double[] times = new double[steps];
            for (int i = 0; i < steps; i++) {
                times[i] = trainer.step().seconds();
            }
            double total = Arrays.stream(times).sum();
            double sgemm = org.sparkatron.train.ModelFlops.sgemmCeilingGflops(1024, 6);
            out.printf(Locale.ROOT, "profile of %d steps: mean step %.4f s (median %.4f s), %.1f GFLOP/s = %.1f%% of sgemm 1024^3 "
                    + "%.1f GFLOP/s (measured after the steps)%n", steps, total / steps, median(times), flops / (total / steps) / 1e9,
                    100 * flops / (total / steps) / 1e9 / sgemm, sgemm);
            kernels.print(out, steps, total / steps, sgemm);
            return;
        }
        // Rounds alternate ours and the peer's so both see the same machine load; the figures kept are
        // medians over rounds.
        double[] ours = new double[rounds];
        double[] peers = new double[rounds];
        double[] sgemms = new double[rounds];
        boolean havePeer = !noPeer;
        for (int r = 0; r < rounds; r++) {
            double[] times = new double[steps];
            for (int i = 0; i < steps; i++) {
                times[i] = trainer.step().seconds();
            }
            ours[r] = median(times);
            sgemms[r] = org.sparkatron.train.ModelFlops.sgemmCeilingGflops(1024, 6);
            out.printf(Locale.ROOT, "round %d: sparkatron step %.4f s (%.1f tokens/s), sgemm %.1f GFLOP/s%n",
                    r + 1, ours[r], batch * seq / ours[r], sgemms[r]);
            if (havePeer) {
                double[] peer = runPeer(layers, width, heads, seq, vocab, batch, steps, threads, out);
                if (peer == null) {
                    havePeer = false;
                } else {
                    peers[r] = peer[0];
                    out.printf(Locale.ROOT, "round %d: pytorch eager step %.4f s (%.1f tokens/s)%n", r + 1, peer[0], peer[1]);
                }
            }
        }
        double ourStep = median(ours);
        double sgemm = median(sgemms);
        double ourTokens = batch * seq / ourStep;
        double ourGflops = flops / ourStep / 1e9;
        out.printf(Locale.ROOT, "sparkatron: step %.4f s, %.1f tokens/s, %.1f GFLOP/s, MFU %.1f%% of measured sgemm (%.1f GFLOP/s)%n",
                ourStep, ourTokens, ourGflops, 100 * ourGflops / sgemm, sgemm);
        String peerTokens = "null";
        String ratio = "null";
        if (noPeer) {
            out.println("peer: skipped (--no-peer)");
        } else if (havePeer) {
            double peerStep = median(peers);
            out.printf(Locale.ROOT, "pytorch eager: step %.4f s, %.1f tokens/s, %.1f GFLOP/s, MFU %.1f%%%n",
                    peerStep, batch * seq / peerStep, flops / peerStep / 1e9, 100 * flops / peerStep / 1e9 / sgemm);
            out.printf(Locale.ROOT, "ratio sparkatron / pytorch (tokens/s, medians over %d rounds): %.2fx%n", rounds, peerStep / ourStep);
            peerTokens = String.format(Locale.ROOT, "%.1f", batch * seq / peerStep);
            ratio = String.format(Locale.ROOT, "%.3f", peerStep / ourStep);
        }
        out.printf(Locale.ROOT, "{\"tokens_per_s\": %.1f, \"peer_tokens_per_s\": %s, \"ratio\": %s, \"mfu\": %.4f, \"sgemm_gflops\": %.1f}%n",
                ourTokens, peerTokens, ratio, ourGflops / sgemm, sgemm);
    }

    private static double median(double[] xs) {
        double[] c = xs.clone();
        Arrays.sort(c);
        return c.length % 2 == 1 ? c[c.length / 2] : (c[c.length / 2 - 1] + c[c.length / 2]) / 2;
    }

    /** Runs the PyTorch peer; returns {step seconds, tokens/s, GFLOP/s} or null (saying why) if unavailable. */
    private static double[] runPeer(int layers, int width, int heads, int seq, int vocab, int batch, int steps, int threads,
                                    PrintStream out) throws java.io.IOException {
        Path script = findPeerScript();
        Path python = Path.of("/usr/bin/python3");
        if (!Files.isExecutable(python)) {
            out.println("peer: skipped (no /usr/bin/python3; install Debian's python3-torch and libopenblas0-pthread)");
            return null;
        }
        ProcessBuilder pb = new ProcessBuilder(python.toString(), script.toString(), "" + layers, "" + width, "" + heads,
                "" + seq, "" + vocab, "" + batch, "" + steps).redirectErrorStream(true);
        pb.environment().put("THREADS", "" + threads);
        out.println("peer: " + String.join(" ", pb.command()) + " (THREADS=" + threads + ")");
        Process p = pb.start();
        StringBuilder text = new StringBuilder();
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null) {
                text.append(line).append('\n');
            }
        }
        try {
            if (!p.waitFor(30, TimeUnit.MINUTES)) {
                p.destroyForcibly();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            p.destroyForcibly();
        }
        Matcher m = Pattern.compile("step_median_s=([0-9.]+) tokens_per_s=([0-9.]+) gflops=([0-9.]+)").matcher(text);
        if (p.exitValue() != 0 || !m.find()) {
            out.println("peer: skipped (it did not run: " + text.toString().strip().replace('\n', ' ') + ")");
            return null;
        }
        out.println("peer says: " + text.toString().strip());
        return new double[] {Double.parseDouble(m.group(1)), Double.parseDouble(m.group(2)), Double.parseDouble(m.group(3))};
    }

    /** The team's peer in ../shared/peers beside the checkout, else the copy shipped in the repository. */
    private static Path findPeerScript() {
        String home = System.getenv().getOrDefault("SPARKATRON_HOME", ".");
        Path shared = Path.of(home).resolve("../shared/peers/torch_gpt_cpu.py").normalize();
        return Files.exists(shared) ? shared : Path.of(home, "gpu-runtime/src/bench/python/torch_gpt_cpu.py");
    }
}
