package org.sparkatron.comm.bench;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * {@code ./sparkatron bench-comm --two-hosts RATE [--op OP]}: all-reduce (or reduce-scatter, all-gather) across two
 * hosts, emulated on this machine, against PyTorch Gloo. Host B is a network namespace joined to this one by a veth pair whose two ends are shaped to
 * {@code RATE} each way (Linux {@code tc tbf}: a link of that bandwidth between two machines); half of the ranks
 * run in it. Each host has its own shared-memory directory, so sparkatron's ranks find two hosts of
 * {@code n / 2} ranks ({@link org.sparkatron.comm.shm.HostMap}) and all-reduce in two levels (shared memory within
 * each host, TCP between them, {@code HostHierarchy}; reduce-scatter and all-gather through pairs of ranks,
 * {@code HostPairs}); "tcp" is the flat TCP ring over the same placement; Gloo's
 * ranks use the same two interfaces ({@code GLOO_SOCKET_IFNAME}), one process each
 * ({@code torch_gloo_collective_rank.py}; Gloo has no reduce-scatter: that one is against the flat TCP ring only,
 * which moves the same bytes as Gloo's ring).
 *
 * <p>Needs root and {@code ip} / {@code tc} (iproute2). The namespace and the link are removed in {@code finally},
 * and any left over from a killed run are removed first.
 */
final class EmulatedHosts {
    private static final String NS = "spkbench-b";
    private static final String LINK_A = "spkbench-a";
    private static final String LINK_B = "spkbench-b0";
    private static final String ADDR_A = "10.213.0.1";
    private static final String ADDR_B = "10.213.0.2";

    private EmulatedHosts() {
    }

    static void bench(String[] args) throws Exception {
        String rate = null;
        int n = 4;
        int pairs = 3;
        long size = 64L << 20;
        String op = "all_reduce";
        for (int i = 0; i < args.length; i++) {
            if (i + 1 >= args.length) {
                throw new org.sparkatron.cli.Cli.UsageException("option " + args[i] + " needs a value");
            }
            switch (args[i]) {
                case "--two-hosts" -> rate = args[++i];
                case "--ranks" -> n = Integer.parseInt(args[++i]);
                case "--pairs" -> pairs = Integer.parseInt(args[++i]);
                case "--op" -> op = args[++i];
                default -> throw new org.sparkatron.cli.Cli.UsageException("with --two-hosts: only --ranks N, --pairs K and --op OP, "
                        + "not " + args[i]);
            }
        }
        if (!rate.matches("[0-9]+(\\.[0-9]+)?[kmg]?bit")) {
            throw new org.sparkatron.cli.Cli.UsageException("--two-hosts takes a tc rate such as 2gbit or 500mbit, got '" + rate + "'");
        }
        if (!List.of("all_reduce", "reduce_scatter", "all_gather").contains(op)) {
            throw new org.sparkatron.cli.Cli.UsageException("--op takes all_reduce, reduce_scatter or all_gather, got '" + op + "'");
        }
        if (n < 4 || n % 2 != 0) {
            throw new org.sparkatron.cli.Cli.UsageException("--ranks must be even and at least 4 (two hosts of two or more ranks), got " + n);
        }
        Path peer = findRankPeer();
        teardown();
        try {
            setup(rate);
            int half = n / 2;
            System.out.println("bench-comm --two-hosts: " + n + " ranks, " + half + " on host A (this namespace, " + ADDR_A + ") and "
                    + half + " on host B (namespace " + NS + ", " + ADDR_B + "), a veth link shaped to " + rate
                    + " each way; " + op + " of 64 MiB fp32 (all ranks' blocks together), medians; load average "
                    + CommBench.loadAverage());
            CommBench.Setup setup = new CommBench.Setup(5, org.sparkatron.comm.tcp.TcpOptions.defaults().segmentBytes,
                    org.sparkatron.comm.shm.ShmOptions.defaults().slotBytes, false);
            Map<String, List<Double>> bw = new LinkedHashMap<>();
            double factor = op.equals("all_reduce") ? 2.0 * (n - 1) / n : (double) (n - 1) / n; // busbw, as nccl-tests
            for (int k = 0; k < pairs; k++) {
                for (String transport : List.of("shm", "tcp")) {
                    Path dir = Files.createTempDirectory("sparkatron-two-hosts");
                    Path shmA = Files.createDirectories(Path.of("/dev/shm", "spkbench-host-a"));
                    Path shmB = Files.createDirectories(Path.of("/dev/shm", "spkbench-host-b"));
                    try {
                        for (String line : CommBench.runProcesses(dir, n, List.of(size), op, transport, setup,
                                r -> r < half ? List.of() : List.of("ip", "netns", "exec", NS),
                                r -> List.of("-D" + CommBench.HOST_PROPERTY + "=" + (r < half ? ADDR_A : ADDR_B),
                                        "-D" + CommBench.SHM_DIR_PROPERTY + "=" + (r < half ? shmA : shmB)))) {
                            double t = Double.parseDouble(line.split(" ")[3]);
                            bw.computeIfAbsent(transport.equals("shm") ? "sparkatron (two levels)" : "sparkatron flat TCP",
                                    x -> new ArrayList<>()).add(size / t / 1e9 * factor);
                        }
                    } finally {
                        delete(dir);
                        delete(shmA);
                        delete(shmB);
                    }
                }
                if (peer != null && !op.equals("reduce_scatter")) {
                    Double g = gloo(peer, n, op);
                    if (g != null) {
                        bw.computeIfAbsent("gloo", x -> new ArrayList<>()).add(g);
                    }
                }
            }
            List<Double> gloo = bw.get("gloo");
            for (Map.Entry<String, List<Double>> e : bw.entrySet()) {
                double m = CommBench.median(e.getValue());
                System.out.printf(Locale.ROOT, "%s 64 MiB, %d ranks on two hosts (%s): %s busbw %s GB/s (median %.3f)%s%n",
                        op, n, rate, e.getKey(), CommBench.fmt(e.getValue()), m, gloo == null || e.getKey().equals("gloo") ? ""
                                : String.format(Locale.ROOT, "; %.2fx gloo", m / CommBench.median(gloo)));
            }
            if (op.equals("reduce_scatter")) {
                System.out.println("Gloo has no reduce_scatter: compare the two levels with the flat TCP ring (the same bytes as "
                        + "Gloo's ring, at the link's rate for all_reduce)");
            } else if (peer == null) {
                System.out.println("Gloo peer skipped: torch_gloo_collective_rank.py not found or /usr/bin/python3 cannot import torch");
            }
            System.out.println("load average after the run: " + CommBench.loadAverage());
        } finally {
            teardown();
        }
    }

    /** Gloo's bus bandwidth over the same placement: one process per rank, half of them in host B. */
    private static Double gloo(Path script, int n, String op) throws IOException, InterruptedException {
        int half = n / 2;
        String port = String.valueOf(29600 + (int) (ProcessHandle.current().pid() % 300));
        List<Process> ps = new ArrayList<>();
        for (int r = 0; r < n; r++) {
            List<String> cmd = new ArrayList<>(r < half ? List.of() : List.of("ip", "netns", "exec", NS));
            cmd.addAll(List.of("/usr/bin/python3", script.toString(), String.valueOf(r), String.valueOf(n), "64", ADDR_A, port, op));
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
            pb.environment().put("GLOO_SOCKET_IFNAME", r < half ? LINK_A : LINK_B);
            if (r > 0) {
                pb.redirectOutput(ProcessBuilder.Redirect.DISCARD);
            }
            ps.add(pb.start());
        }
        String out = new String(ps.get(0).getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        for (Process p : ps) {
            if (!p.waitFor(600, TimeUnit.SECONDS)) {
                ps.forEach(Process::destroyForcibly);
                return null;
            }
        }
        Matcher m = Pattern.compile("busbw_GBps=([0-9.]+)").matcher(out);
        if (!m.find()) {
            System.out.println("gloo " + n + " ranks on two hosts: no result; output:\n" + out);
            return null;
        }
        return Double.parseDouble(m.group(1));
    }

    private static Path findRankPeer() {
        if (!CommBench.torchAvailable()) {
            return null;
        }
        return CommBench.findScript("gpu-runtime/src/bench/python/torch_gloo_collective_rank.py");
    }

    private static void setup(String rate) throws IOException, InterruptedException {
        sh("ip", "netns", "add", NS);
        sh("ip", "link", "add", LINK_A, "type", "veth", "peer", "name", LINK_B);
        sh("ip", "link", "set", LINK_B, "netns", NS);
        sh("ip", "addr", "add", ADDR_A + "/24", "dev", LINK_A);
        sh("ip", "link", "set", LINK_A, "up");
        sh("ip", "netns", "exec", NS, "ip", "addr", "add", ADDR_B + "/24", "dev", LINK_B);
        sh("ip", "netns", "exec", NS, "ip", "link", "set", LINK_B, "up");
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up");
        // a token bucket each way: the link's bandwidth; 1 MB of burst, packets wait up to 100 ms
        sh("tc", "qdisc", "add", "dev", LINK_A, "root", "tbf", "rate", rate, "burst", "1mb", "latency", "100ms");
        sh("ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", LINK_B, "root", "tbf", "rate", rate, "burst", "1mb",
                "latency", "100ms");
    }

    private static void teardown() throws IOException, InterruptedException {
        run("ip", "netns", "del", NS); // takes its end of the veth pair, and so the pair, with it
        run("ip", "link", "del", LINK_A);
    }

    private static void sh(String... cmd) throws IOException, InterruptedException {
        String err = run(cmd);
        if (err != null) {
            throw new IllegalStateException("two emulated hosts need root and iproute2: '" + String.join(" ", cmd)
                    + "' failed: " + err.trim());
        }
    }

    /** Runs a command; null when it succeeded, else its output. */
    private static String run(String... cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            return "timed out";
        }
        return p.exitValue() == 0 ? null : out;
    }

    private static void delete(Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return;
        }
        try (var files = Files.list(dir)) {
            for (Path f : files.toList()) {
                Files.deleteIfExists(f);
            }
        }
        Files.deleteIfExists(dir);
    }
}
