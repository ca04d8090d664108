package org.sparkatron.parallel;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.sparkatron.bench.BenchArgs;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron bench-moe}, two figures with their peers in the same command:
 * <ol>
 *   <li>All-to-all bus bandwidth of our communicator (the expert dispatch's collective; ranks as threads of
 *       this JVM on loopback) against PyTorch Gloo's {@code all_to_all_single} (processes on loopback,
 *       {@code gpu-runtime/src/bench/python/torch_gloo_alltoall.py} run by {@code /usr/bin/python3}) at the same
 *       sizes. Size = bytes of each rank's fp32 input, split evenly; time = median of rank 0's time for one
 *       operation right after a barrier; busbw = size / time x (n-1)/n (nccl-tests' definition).
 *   <li>MoE layer throughput: training steps (forward, backward, AdamW) in tokens/s of a Mixtral model (E experts,
 *       top-k) against a Llama model whose dense MLP has the MoE layer's active parameters per token
 *       (intermediate = k x the expert width), the same attention, embeddings and shapes otherwise, on one rank.
 *       The two alternate for {@code --rounds} rounds and each figure is a median, so load from other processes
 *       falls on both alike.
 * </ol>
 * Runs on the calling thread (plus rank threads); prints as it goes; nothing is kept.
 */
public final class MoeBench {
    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-moe [--experts 8] [--top-k 2] [--layers 2] [--width 256] [--expert-ffn 512] [--heads 8]",
            "         [--seq 128] [--batch 4] [--vocab 8192] [--steps 3] [--rounds 3] [--threads 1]",
            "         [--ranks 2] [--sizes 1M,4M,16M,64M] [--no-peer] [--no-a2a] [--no-layer]",
            "  all-to-all bus bandwidth against PyTorch Gloo, and MoE training throughput against a dense model of equal",
            "  active parameters (docs/moe.md)");
    private static final Pattern GLOO = Pattern.compile("gloo all_to_all world=(\\d+) size_bytes=(\\d+) time_s=([0-9.]+) busbw_GBps=([0-9.]+)");

    private MoeBench() {
    }

    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("bench-moe", USAGE, argv, args -> {
            bench(args);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    static void bench(String[] argv) throws Exception {
        BenchArgs a = new BenchArgs("bench-moe", argv, Set.of("experts", "top-k", "layers", "width", "expert-ffn", "heads", "seq",
                "batch", "vocab", "steps", "rounds", "threads", "ranks", "sizes"), Set.of("no-peer", "no-a2a", "no-layer"));
        int rounds = a.integer("rounds", 3);
        if (!a.flag("no-a2a")) {
            allToAll(a.integer("ranks", 2), sizes(a.string("sizes", "1M,4M,16M,64M")), rounds, !a.flag("no-peer"));
        }
        if (!a.flag("no-layer")) {
            layer(a, rounds);
        }
    }

    // ---- all-to-all ----

    private static void allToAll(int ranks, List<Long> sizes, int rounds, boolean peer) throws Exception {
        System.out.printf(Locale.ROOT, "bench-moe all-to-all: %d ranks (threads, TCP on loopback), sizes %s, %d rounds%n", ranks,
                sizes, rounds);
        Map<Long, List<Double>> ours = new LinkedHashMap<>();
        Map<Long, List<Double>> gloo = new LinkedHashMap<>();
        Path script = peer ? peerScript() : null;
        if (peer && script == null) {
            System.out.println("Gloo peer skipped: torch_gloo_alltoall.py not found (SPARKATRON_HOME unset?)");
        }
        for (int r = 0; r < rounds; r++) { // ours, then Gloo, round after round
            double[] t = ourAllToAll(ranks, sizes);
            for (int i = 0; i < sizes.size(); i++) {
                ours.computeIfAbsent(sizes.get(i), k -> new ArrayList<>()).add(busbw(sizes.get(i), ranks, t[i]));
            }
            if (script != null) {
                for (Map.Entry<Long, Double> e : runGloo(script, ranks, sizes).entrySet()) {
                    gloo.computeIfAbsent(e.getKey(), k -> new ArrayList<>()).add(e.getValue());
                }
            }
        }
        System.out.println("| size | sparkatron busbw GB/s (median) | gloo busbw GB/s (median) | ratio |");
        System.out.println("|---|---|---|---|");
        for (long s : sizes) {
            double o = median(ours.get(s));
            List<Double> g = gloo.get(s);
            System.out.printf(Locale.ROOT, "| %s | %.3f | %s | %s |%n", human(s), o, g == null ? "-" : String.format(Locale.ROOT, "%.3f", median(g)),
                    g == null ? "-" : String.format(Locale.ROOT, "%.2fx", o / median(g)));
        }
    }

    /** Rank 0's median seconds per all-to-all at each size (even splits of fp32 elements). */
    private static double[] ourAllToAll(int ranks, List<Long> sizes) throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(ranks, 60_000);
        byte[] secret = "bench-moe-secret-0123456789abcdef".getBytes(StandardCharsets.UTF_8);
        ExecutorService pool = Executors.newFixedThreadPool(ranks);
        try {
            List<Future<double[]>> fs = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (Communicator c = TcpCommunicator.create(rank, ranks, rv.forRank(rank), secret, TcpOptions.defaults())) {
                        double[] out = new double[sizes.size()];
                        for (int i = 0; i < sizes.size(); i++) {
                            out[i] = timeAllToAll(c, sizes.get(i));
                        }
                        return out;
                    }
                }));
            }
            double[] rank0 = null;
            for (Future<double[]> f : fs) {
                double[] v = f.get(10, TimeUnit.MINUTES);
                rank0 = rank0 == null ? v : rank0;
            }
            return rank0;
        } finally {
            pool.shutdownNow();
        }
    }

    private static double timeAllToAll(Communicator c, long size) {
        int n = c.size();
        int count = (int) (size / 4 / n * n);
        Tensor in = Tensor.allocateHost(DType.F32, count);
        Tensor out = Tensor.allocateHost(DType.F32, count);
        int[] counts = new int[n];
        java.util.Arrays.fill(counts, count / n);
        for (int i = 0; i < 2; i++) {
            c.allToAll(in, counts, out, counts);
        }
        double[] ts = new double[5];
        for (int i = 0; i < ts.length; i++) {
            c.barrier();
            long t0 = System.nanoTime();
            c.allToAll(in, counts, out, counts);
            ts[i] = (System.nanoTime() - t0) / 1e9;
        }
        return BenchArgs.median(ts);
    }

    /** Gloo's busbw by size, from one run of the peer script (all sizes in one process group). */
    private static Map<Long, Double> runGloo(Path script, int ranks, List<Long> sizes) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("/usr/bin/python3", script.toString(), "" + ranks));
        for (long s : sizes) {
            cmd.add("" + s);
        }
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        Map<Long, Double> out = new LinkedHashMap<>();
        StringBuilder text = new StringBuilder();
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            for (String line; (line = r.readLine()) != null; ) {
                text.append(line).append('\n');
                Matcher m = GLOO.matcher(line);
                if (m.find()) {
                    System.out.println("  peer: " + line.strip());
                    out.put(nearest(sizes, Long.parseLong(m.group(2))), Double.parseDouble(m.group(4)));
                }
            }
        }
        if (!p.waitFor(10, TimeUnit.MINUTES)) {
            p.destroyForcibly();
        }
        if (out.isEmpty()) {
            System.out.println("  peer: no result; output: " + text.toString().strip().replace('\n', ' '));
        }
        return out;
    }

    /** The peer's script: ../shared/peers beside the checkout, else the repository's copy; null when neither exists. */
    private static Path peerScript() {
        String home = System.getenv().getOrDefault("SPARKATRON_HOME", ".");
        for (Path p : new Path[] {Path.of(home).resolve("../shared/peers/torch_gloo_alltoall.py").normalize(),
            Path.of(home, "gpu-runtime/src/bench/python/torch_gloo_alltoall.py")}) {
            if (Files.exists(p)) {
                return p;
            }
        }
        return null;
    }

    // ---- MoE layer against dense ----

    private static void layer(BenchArgs a, int rounds) throws Exception {
        int experts = a.integer("experts", 8);
        int topK = a.integer("top-k", 2);
        int layers = a.integer("layers", 2);
        int width = a.integer("width", 256);
        int ffn = a.integer("expert-ffn", 512);
        int heads = a.integer("heads", 8);
        int seq = a.integer("seq", 128);
        int batch = a.integer("batch", 4);
        int vocab = a.integer("vocab", 8192);
        int steps = a.integer("steps", 3);
        Blas.setThreads(a.integer("threads", 1));
        String common = "\"num_hidden_layers\":" + layers + ",\"hidden_size\":" + width + ",\"num_attention_heads\":" + heads
                + ",\"num_key_value_heads\":" + heads + ",\"vocab_size\":" + vocab + ",\"max_position_embeddings\":" + seq
                + ",\"tie_word_embeddings\":false";
        ObjectMapper json = new ObjectMapper();
        ModelConfig moe = ModelConfig.fromJson(json.readTree("{\"model_type\":\"mixtral\"," + common + ",\"intermediate_size\":" + ffn
                + ",\"num_local_experts\":" + experts + ",\"num_experts_per_tok\":" + topK + ",\"moe_aux_loss_coeff\":0.01}"));
        ModelConfig dense = ModelConfig.fromJson(json.readTree("{\"model_type\":\"llama\"," + common + ",\"intermediate_size\":"
                + (topK * ffn) + "}"));
        System.out.printf(Locale.ROOT, "bench-moe layer: L=%d C=%d H=%d T=%d B=%d V=%d; MoE E=%d top-%d F=%d against dense F=%d "
                + "(equal active MLP parameters per token); %d timed steps after 1 warm-up, %d BLAS thread(s), %d rounds%n",
                layers, width, heads, seq, batch, vocab, experts, topK, ffn, topK * ffn, steps, a.integer("threads", 1), rounds);
        double[] m = new double[rounds];
        double[] d = new double[rounds];
        double[] loss = new double[2];
        for (int r = 0; r < rounds; r++) {
            double[] x = steps(moe, batch, seq, steps);
            double[] y = steps(dense, batch, seq, steps);
            m[r] = batch * (double) seq / x[0];
            d[r] = batch * (double) seq / y[0];
            loss[0] = x[1];
            loss[1] = y[1];
            System.out.printf(Locale.ROOT, "round %d: MoE %.1f tokens/s, dense %.1f tokens/s%n", r + 1, m[r], d[r]);
        }
        System.out.printf(Locale.ROOT, "MoE (E=%d, top-%d):   %9.1f tokens/s (median; loss after the last step %.4f)%n", experts, topK,
                BenchArgs.median(m), loss[0]);
        System.out.printf(Locale.ROOT, "dense (F=%d):       %9.1f tokens/s (loss %.4f)%n", topK * ffn, BenchArgs.median(d), loss[1]);
        System.out.printf(Locale.ROOT, "ratio MoE / dense (tokens/s, medians): %.2fx%n", BenchArgs.median(m) / BenchArgs.median(d));
    }

    /** {mean seconds per training step, last loss}. */
    private static double[] steps(ModelConfig cfg, int batch, int seq, int steps) {
        try (CpuDevice dev = new CpuDevice()) {
            Transformer m = new Transformer(cfg, dev);
            m.initialize(1);
            Trainer tr = new Trainer(m, BenchArgs.randomSamples(cfg, seq), Trainer.Options.defaults(batch, LrSchedule.constant(1e-3)));
            tr.step();
            long t0 = System.nanoTime();
            double loss = 0;
            for (int s = 0; s < steps; s++) {
                loss = tr.step().loss();
            }
            return new double[] {(System.nanoTime() - t0) / 1e9 / steps, loss};
        }
    }

    // ---- helpers ----

    private static List<Long> sizes(String spec) {
        List<Long> out = new ArrayList<>();
        for (String s : spec.split(",")) {
            String t = s.trim().toUpperCase(Locale.ROOT);
            long mult = t.endsWith("K") ? 1L << 10 : t.endsWith("M") ? 1L << 20 : t.endsWith("G") ? 1L << 30 : 1;
            try {
                out.add(Long.parseLong(mult == 1 ? t : t.substring(0, t.length() - 1)) * mult);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("bench-moe: --sizes takes sizes like 1M,4M,16M, got '" + s + "'");
            }
        }
        return out;
    }

    private static long nearest(List<Long> sizes, long bytes) {
        long best = sizes.get(0);
        for (long s : sizes) {
            if (Math.abs(s - bytes) < Math.abs(best - bytes)) {
                best = s;
            }
        }
        return best;
    }

    private static double busbw(long size, int n, double seconds) {
        long count = size / 4 / n * n;
        return count * 4 / seconds / 1e9 * (n - 1) / n;
    }

    private static double median(List<Double> v) {
        return BenchArgs.median(v.stream().mapToDouble(Double::doubleValue).toArray());
    }

    private static String human(long s) {
        return s >= 1L << 20 ? (s >> 20) + " MiB" : s >= 1L << 10 ? (s >> 10) + " KiB" : s + " B";
    }
}
