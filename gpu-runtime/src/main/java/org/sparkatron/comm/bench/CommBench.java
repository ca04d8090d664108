package org.sparkatron.comm.bench;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.Communicators;
import org.sparkatron.comm.FileRendezvous;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Rendezvous;
import org.sparkatron.comm.shm.ShmCommunicator;
import org.sparkatron.comm.shm.ShmOptions;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * {@code ./sparkatron bench-comm}: bus bandwidth of all-reduce, reduce-scatter, all-gather and all-to-all,
 * ranks as separate processes of this host (or threads of one JVM), through shared memory (what
 * {@link Communicators#connect} picks on one host) and through TCP on loopback (what it uses across hosts),
 * and the Gloo peer in the same command.
 *
 * <p>Definitions as nccl-tests: size = bytes of the full per-rank buffer (all-reduce: the tensor;
 * reduce-scatter: the input; all-gather: the output; all-to-all: the input), fp32 elements; time = median
 * over iterations of rank 0's time for one operation started right after a barrier (as the Gloo peer
 * measures); algbw = size / time; busbw = algbw x 2(n-1)/n for all-reduce and x (n-1)/n for the others.
 *
 * <pre>
 *   ./sparkatron bench-comm [--ranks 2,4] [--max-size 256M] [--quick] [--iters N] [--no-peer] [--peer FILE]
 *                           [--segment 512K] [--transport shm,tcp] [--sweep shm] [--threads] [--slot 1M] [--pairs 3] [--sizes 1M,64M]
 *                           [--ceiling]
 * </pre>
 */
public final class CommBench {
    private static final String[] OPS = {"all_reduce", "reduce_scatter", "all_gather", "all_to_all"};

    private CommBench() {
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-comm [--ranks 2,4] [--max-size 256M] [--quick] [--iters 5] [--no-peer] [--peer FILE]",
            "         [--segment 512K] [--transport shm,tcp] [--sweep shm] [--threads] [--slot 1M] [--pairs 3] [--sizes 1M,64M]",
            "         [--ceiling]   (also pair the host's raw TCP and memory-copy ceilings with each Gloo run)",
            "       ./sparkatron bench-comm --two-hosts RATE [--ranks 4] [--pairs 3] [--op all_reduce]   (root: two hosts",
            "         emulated by a network namespace and a veth link shaped to RATE, e.g. 2gbit; all_reduce, reduce_scatter",
            "         or all_gather across them against Gloo, docs/comm.md)",
            "  collectives through shared memory and over TCP (ranks as JVMs on one host; --threads: ranks as threads",
            "  of one JVM) against PyTorch Gloo, as nccl-tests (docs/comm.md)");

    public static void main(String[] argv) throws Exception {
        if (argv.length > 0 && argv[0].equals("--worker")) {
            worker(argv);
            return;
        }
        org.sparkatron.cli.Cli.main("bench-comm", USAGE, argv, args -> {
            bench(args);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    private static void bench(String[] args) throws Exception {
        if (Arrays.asList(args).contains("--two-hosts")) {
            EmulatedHosts.bench(args);
            return;
        }
        int[] worlds = {2, 4};
        long maxSize = 256L << 20;
        boolean quick = false;
        boolean peer = true;
        int iters = 5;
        String peerPath = null;
        int segment = TcpOptions.defaults().segmentBytes;
        int slot = ShmOptions.defaults().slotBytes;
        List<String> transports = List.of("shm", "tcp");
        List<String> sweep = null;
        boolean threads = false;
        boolean ceiling = false;
        int pairs = 3;
        List<Long> only = null;
        for (int i = 0; i < args.length; i++) {
            if (!List.of("--quick", "--no-peer", "--threads", "--ceiling").contains(args[i]) && i + 1 >= args.length) {
                throw new org.sparkatron.cli.Cli.UsageException("option " + args[i] + " needs a value");
            }
            switch (args[i]) {
                case "--ranks" -> worlds = Arrays.stream(args[++i].split(",")).mapToInt(Integer::parseInt).toArray();
                case "--max-size" -> maxSize = parseSize(args[++i]);
                case "--quick" -> quick = true;
                case "--iters" -> iters = Integer.parseInt(args[++i]);
                case "--no-peer" -> peer = false;
                case "--peer" -> peerPath = args[++i];
                case "--segment" -> segment = (int) parseSize(args[++i]);
                case "--slot" -> slot = (int) parseSize(args[++i]);
                case "--transport" -> transports = List.of(args[++i].split(","));
                case "--sweep" -> sweep = List.of(args[++i].split(","));
                case "--threads" -> threads = true;
                case "--ceiling" -> ceiling = true;
                case "--pairs" -> pairs = Integer.parseInt(args[++i]);
                case "--sizes" -> only = Arrays.stream(args[++i].split(",")).map(CommBench::parseSize).toList();
                default -> throw new org.sparkatron.cli.Cli.UsageException("unknown option '" + args[i] + "' (./sparkatron bench-comm --help)");
            }
        }
        for (String t : transports) {
            if (!t.equals("shm") && !t.equals("tcp")) {
                throw new org.sparkatron.cli.Cli.UsageException("--transport takes shm and/or tcp, got '" + t + "'");
            }
        }
        if (sweep == null) {
            sweep = List.of(transports.get(0));
        }
        if (maxSize > (1L << 30)) {
            throw new IllegalArgumentException("--max-size " + maxSize + " exceeds 1 GiB (one buffer per op)");
        }
        List<Long> sizes = new ArrayList<>();
        for (long s = 4096; s <= maxSize; s *= quick ? 16 : 4) {
            sizes.add(s);
        }
        if (quick && !sizes.contains(64L << 20) && maxSize >= (64L << 20)) {
            sizes.add(64L << 20);
        }
        if (only != null) {
            sizes = new ArrayList<>(only);
        }
        Setup setup = new Setup(iters, segment, slot, threads);
        System.out.println("bench-comm: ranks as " + (threads ? "threads of one JVM" : "separate JVMs") + ", fp32, "
                + "shared-memory slot " + human(slot) + ", TCP segment " + human(segment) + " on loopback, "
                + Runtime.getRuntime().availableProcessors() + " cores on this machine, load average "
                + loadAverage());
        System.out.printf(Locale.ROOT, "%-9s %-15s %5s %10s %11s %11s %11s %11s%n", "transport", "op", "ranks", "size", "time_ms",
                "algbw_GB/s", "busbw_GB/s", "cpu_ms/rank");
        Map<String, Double> ours64 = new LinkedHashMap<>();
        for (String transport : sweep) {
            for (int n : worlds) {
                for (String line : runWorld(n, sizes, String.join(",", OPS), transport, setup)) {
                    String[] f = line.split(" ");
                    String op = f[1];
                    long size = Long.parseLong(f[2]);
                    double t = Double.parseDouble(f[3]);
                    double algbw = size / t / 1e9;
                    double factor = op.equals("all_reduce") ? 2.0 * (n - 1) / n : (double) (n - 1) / n;
                    double cpu = Double.parseDouble(f[4]);
                    System.out.printf(Locale.ROOT, "%-9s %-15s %5d %10s %11.3f %11.3f %11.3f %11.3f%n", transport, op, n,
                            human(size), t * 1e3, algbw, algbw * factor, cpu * 1e3);
                    if (op.equals("all_reduce") && size == (64L << 20)) {
                        ours64.put(transport + n, algbw * factor);
                    }
                }
            }
        }
        if (!peer) {
            return;
        }
        Path script = findPeer(peerPath);
        if (script == null || !torchAvailable()) {
            System.out.println("Gloo peer skipped: " + (script == null ? "torch_gloo_allreduce.py not found"
                    : "/usr/bin/python3 cannot import torch"));
            return;
        }
        // Shared machines drift: the ratio pairs each Gloo run with fresh 64 MiB all-reduce runs of ours right
        // before it (alternating, --pairs times), and compares the medians of each kind.
        System.out.println("peer: /usr/bin/python3 " + script + " N 64  (torch.distributed gloo, 64 MiB fp32 all-reduce,"
                + " processes on loopback); paired " + pairs + " times: ours (" + String.join(", ", transports) + ")"
                + (ceiling ? ", the host's ceilings (CommCeiling)" : "") + ", then gloo");
        for (int n : worlds) {
            List<Double> glooBw = new ArrayList<>();
            Map<String, List<Double>> oursBw = new LinkedHashMap<>();
            Map<String, List<Double>> ceilings = new LinkedHashMap<>();
            for (int k = 0; k < pairs; k++) {
                for (String transport : transports) {
                    for (String line : runWorld(n, List.of(64L << 20), "all_reduce", transport, setup)) {
                        double t = Double.parseDouble(line.split(" ")[3]);
                        oursBw.computeIfAbsent(transport, x -> new ArrayList<>()).add((64L << 20) / t / 1e9 * 2.0 * (n - 1) / n);
                    }
                }
                if (ceiling) {
                    for (String line : runWorld(n, List.of(64L << 20), "ceiling_tcp,ceiling_copy", "tcp", setup)) {
                        double t = Double.parseDouble(line.split(" ")[3]);
                        ceilings.computeIfAbsent(line.split(" ")[1], x -> new ArrayList<>())
                                .add((64L << 20) / t / 1e9 * 2.0 * (n - 1) / n);
                    }
                }
                String out = run(List.of("/usr/bin/python3", script.toString(), String.valueOf(n), "64"), 600);
                Matcher m = Pattern.compile("busbw_GBps=([0-9.]+)").matcher(out);
                if (!m.find()) {
                    System.out.println("gloo " + n + " ranks: no result; output:\n" + out);
                    continue;
                }
                glooBw.add(Double.parseDouble(m.group(1)));
            }
            if (glooBw.isEmpty()) {
                continue;
            }
            double g = median(glooBw);
            System.out.printf(Locale.ROOT, "all_reduce 64 MiB, %d ranks: gloo busbw %s GB/s (median %.3f)%n", n, fmt(glooBw), g);
            for (Map.Entry<String, List<Double>> e : oursBw.entrySet()) {
                String key = e.getKey() + n;
                System.out.printf(Locale.ROOT, "all_reduce 64 MiB, %d ranks: sparkatron %s busbw %s GB/s (median %.3f%s);"
                                + " ratio of medians %.2fx gloo%n", n, e.getKey(), fmt(e.getValue()), median(e.getValue()),
                        ours64.containsKey(key) ? String.format(Locale.ROOT, ", sweep above %.3f", ours64.get(key)) : "",
                        median(e.getValue()) / g);
            }
            for (Map.Entry<String, List<Double>> e : ceilings.entrySet()) {
                System.out.printf(Locale.ROOT, "all_reduce 64 MiB, %d ranks: ceiling %s, as busbw %s GB/s (median %.3f);"
                                + " %.2fx gloo%n", n, e.getKey().equals("ceiling_tcp")
                                ? "raw loopback TCP moving the ring's bytes (no reduction)"
                                : "every rank copying its 64 MiB at once (the direct algorithm's memory traffic)",
                        fmt(e.getValue()), median(e.getValue()), median(e.getValue()) / g);
            }
        }
        System.out.println("load average after the run: " + loadAverage());
    }

    /** How the ranks of a run are set up. */
    record Setup(int iters, int segment, int slot, boolean threads) {
    }

    /** A worker's TCP address (bind and advertise) when set: the emulated hosts' (EmulatedHosts); loopback otherwise. */
    static final String HOST_PROPERTY = "sparkatron.bench.host";
    /** A worker's shared-memory directory when set: one per emulated host. */
    static final String SHM_DIR_PROPERTY = "sparkatron.bench.shm-dir";

    static String loadAverage() {
        try {
            String[] f = Files.readString(Path.of("/proc/loadavg")).split(" ");
            return f[0] + " " + f[1] + " " + f[2];
        } catch (IOException | RuntimeException e) {
            return "unknown";
        }
    }

    static double median(List<Double> xs) {
        double[] a = xs.stream().mapToDouble(Double::doubleValue).sorted().toArray();
        return a.length % 2 == 1 ? a[a.length / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
    }

    static String fmt(List<Double> xs) {
        StringBuilder b = new StringBuilder();
        for (double x : xs) {
            b.append(b.length() == 0 ? "" : "/").append(String.format(Locale.ROOT, "%.3f", x));
        }
        return b.toString();
    }

    /** Runs n ranks (worker JVMs, or threads of this JVM), returns rank 0's RESULT lines. */
    private static List<String> runWorld(int n, List<Long> sizes, String ops, String transport, Setup setup)
            throws Exception {
        Path dir = Files.createTempDirectory("sparkatron-bench-comm");
        try {
            return setup.threads() ? runThreads(dir, n, sizes, ops, transport, setup)
                    : runProcesses(dir, n, sizes, ops, transport, setup);
        } finally {
            try (var files = Files.list(dir)) {
                for (Path f : files.toList()) {
                    Files.deleteIfExists(f);
                }
            }
            Files.deleteIfExists(dir);
        }
    }

    private static List<String> runProcesses(Path dir, int n, List<Long> sizes, String ops, String transport, Setup setup)
            throws Exception {
        return runProcesses(dir, n, sizes, ops, transport, setup, r -> List.of(), r -> List.of());
    }

    /**
     * Worker JVMs, rank r's command prefixed by {@code prefix.apply(r)} (such as {@code ip netns exec NS}) and given
     * the JVM options {@code props.apply(r)} ({@link #HOST_PROPERTY}, {@link #SHM_DIR_PROPERTY}).
     */
    static List<String> runProcesses(Path dir, int n, List<Long> sizes, String ops, String transport, Setup setup,
                                     java.util.function.IntFunction<List<String>> prefix,
                                     java.util.function.IntFunction<List<String>> props) throws Exception {
        Path secret = dir.resolve("secret");
        byte[] key = new byte[32];
        new SecureRandom().nextBytes(key);
        Files.writeString(secret, HexFormat.of().formatHex(key));
        Files.setPosixFilePermissions(secret, PosixFilePermissions.fromString("rw-------"));
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        long max = sizes.get(sizes.size() - 1);
        String direct = "-XX:MaxDirectMemorySize=" + Math.max(1L << 30, 6 * max);
        List<Process> ps = new ArrayList<>();
        for (int r = 0; r < n; r++) {
            List<String> cmd = new ArrayList<>(prefix.apply(r));
            cmd.addAll(List.of(java, "-Xmx512m", direct, "-XX:+UseParallelGC", "--add-modules=jdk.incubator.vector"));
            cmd.addAll(props.apply(r));
            cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), CommBench.class.getName(), "--worker", dir.toString(),
                    String.valueOf(r), String.valueOf(n), String.valueOf(setup.iters()), String.valueOf(setup.segment()),
                    String.valueOf(setup.slot()), transport, ops));
            sizes.forEach(s -> cmd.add(String.valueOf(s)));
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
            if (r > 0) {
                pb.redirectOutput(ProcessBuilder.Redirect.DISCARD);
            }
            ps.add(pb.start());
        }
        List<String> results = new ArrayList<>();
        try (BufferedReader in = new BufferedReader(new InputStreamReader(ps.get(0).getInputStream(),
                StandardCharsets.UTF_8))) {
            for (String line; (line = in.readLine()) != null; ) {
                if (line.startsWith("RESULT ")) {
                    results.add(line);
                } else if (!line.isBlank()) {
                    System.err.println("rank 0: " + line);
                }
            }
        }
        for (int r = 0; r < n; r++) {
            if (!ps.get(r).waitFor(600, TimeUnit.SECONDS) || ps.get(r).exitValue() != 0) {
                ps.forEach(Process::destroyForcibly);
                throw new IllegalStateException("bench-comm worker " + r + " of " + n + " failed");
            }
        }
        return results;
    }

    private static List<String> runThreads(Path dir, int n, List<Long> sizes, String ops, String transport, Setup setup)
            throws Exception {
        byte[] secret = new byte[32];
        new SecureRandom().nextBytes(secret);
        InProcessRendezvous rv = new InProcessRendezvous(n, 60_000);
        List<String> results = java.util.Collections.synchronizedList(new ArrayList<>());
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            List<Future<?>> fs = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    rankBody(rank, n, rv.forRank(rank), secret, setup, transport, ops, sizes, results::add);
                    return null;
                }));
            }
            for (Future<?> f : fs) {
                f.get(600, TimeUnit.SECONDS);
            }
        } finally {
            pool.shutdownNow();
        }
        return results;
    }

    private static void worker(String[] a) throws Exception {
        Path dir = Path.of(a[1]);
        int rank = Integer.parseInt(a[2]);
        int n = Integer.parseInt(a[3]);
        Setup setup = new Setup(Integer.parseInt(a[4]), Integer.parseInt(a[5]), Integer.parseInt(a[6]), false);
        byte[] secret = HexFormat.of().parseHex(Files.readString(dir.resolve("secret")).trim());
        List<Long> sizes = new ArrayList<>();
        for (int i = 9; i < a.length; i++) {
            sizes.add(Long.parseLong(a[i]));
        }
        rankBody(rank, n, new FileRendezvous(dir, rank, n, 60_000), secret, setup, a[7], a[8], sizes, line -> {
            System.out.println(line);
            System.out.flush();
        });
    }

    /** One rank: connects, warms up, measures each op and size; rank 0 reports "RESULT op size seconds". */
    private static void rankBody(int rank, int n, Rendezvous rv, byte[] secret, Setup setup, String transport, String ops,
                                 List<Long> sizes, java.util.function.Consumer<String> report) {
        TcpOptions opts = TcpOptions.loopback().withTimeouts(60_000, 120_000);
        opts = opts.withSizes(opts.maxMessageBytes, setup.segment(), opts.smallBytes);
        String host = System.getProperty(HOST_PROPERTY);
        if (host != null) {
            opts = opts.withHosts(host, host);
        }
        ShmOptions shm = ShmOptions.defaults().withEnabled(transport.equals("shm"))
                .withSizes(setup.slot(), Math.min(setup.slot(), ShmOptions.defaults().smallBytes));
        String shmDir = System.getProperty(SHM_DIR_PROPERTY);
        if (shmDir != null) {
            shm = shm.withDir(Path.of(shmDir));
        }
        try (Communicator c = Communicators.connect(rank, n, rv, secret, opts, shm)) {
            boolean viaMemory = c instanceof ShmCommunicator s && (s.sharedMemory() || s.hierarchical());
            if (transport.equals("shm") && !viaMemory) {
                throw new IllegalStateException("shared memory unavailable here (" + shm + ")");
            }
            if (ops.startsWith("ceiling")) {
                for (String op : ops.split(",")) {
                    double t = op.equals("ceiling_tcp") ? CommCeiling.ringBytesOverTcp(c, sizes.get(0), setup.iters())
                            : CommCeiling.copyEverywhere(c, sizes.get(0), setup.iters());
                    if (rank == 0) {
                        report.accept(String.format(Locale.ROOT, "RESULT %s %d %.9f 0", op, sizes.get(0), t));
                    }
                }
                return;
            }
            // Warm-up (JIT) on both the small and the large paths before anything is timed.
            for (String op : ops.split(",")) {
                measure(c, op, 4096, 40, 1);
                measure(c, op, 1 << 20, 10, 1);
            }
            for (String op : ops.split(",")) {
                for (long size : sizes) {
                    double[] t = measure(c, op, size, setup.iters(), setup.threads() ? n : 1);
                    if (rank == 0) {
                        report.accept(String.format(Locale.ROOT, "RESULT %s %d %.9f %.9f", op, size, t[0], t[1]));
                    }
                }
            }
        }
    }

    /**
     * Median wall time of one operation on this rank, and median CPU time of this rank's process over the same
     * operation divided by {@code ranksPerProcess} (all threads: caller, TCP readers and writers, waits; a
     * measure of work that other processes on the machine barely disturb).
     */
    private static double[] measure(Communicator c, String op, long size, int iters, int ranksPerProcess) {
        int n = c.size();
        int count = (int) (size / 4 / n * n);
        Tensor full = Tensor.allocateHost(DType.F32, count);
        Tensor part = Tensor.allocateHost(DType.F32, count / n);
        Tensor other = op.equals("all_to_all") ? Tensor.allocateHost(DType.F32, count) : null;
        int[] counts = new int[n];
        Arrays.fill(counts, count / n);
        for (int i = 0; i < count; i++) {
            full.floats().put(i, 1f);
        }
        Runnable once = switch (op) {
            case "all_reduce" -> () -> c.allReduce(full, ReduceOp.SUM);
            case "reduce_scatter" -> () -> c.reduceScatter(full, part, ReduceOp.SUM);
            case "all_gather" -> () -> c.allGather(part, full);
            case "all_to_all" -> () -> c.allToAll(full, counts, other, counts);
            default -> throw new IllegalArgumentException(op);
        };
        int reps = size > (64L << 20) ? Math.max(3, iters - 2) : size <= (1 << 20) ? iters * 4 : iters;
        once.run();
        once.run();
        double[] ts = new double[reps];
        double[] cpu = new double[reps];
        for (int i = 0; i < reps; i++) {
            c.barrier();
            long c0 = processCpuNanos();
            long t0 = System.nanoTime();
            once.run();
            ts[i] = (System.nanoTime() - t0) / 1e9;
            cpu[i] = (processCpuNanos() - c0) / 1e9 / ranksPerProcess;
        }
        Arrays.sort(ts);
        Arrays.sort(cpu);
        return new double[] {ts[reps / 2], cpu[reps / 2]};
    }

    /** CPU time of this JVM's live threads (nanosecond clocks; the process clock here ticks in 10 ms). */
    private static long processCpuNanos() {
        if (!(java.lang.management.ManagementFactory.getThreadMXBean() instanceof com.sun.management.ThreadMXBean tm)) {
            return 0;
        }
        long sum = 0;
        for (long t : tm.getThreadCpuTime(tm.getAllThreadIds())) {
            sum += Math.max(0, t);
        }
        return sum;
    }

    private static long parseSize(String s) {
        String u = s.toUpperCase(Locale.ROOT).replace("IB", "").replace("B", "");
        long mult = u.endsWith("K") ? 1L << 10 : u.endsWith("M") ? 1L << 20 : u.endsWith("G") ? 1L << 30 : 1;
        return Long.parseLong(mult == 1 ? u : u.substring(0, u.length() - 1)) * mult;
    }

    private static String human(long b) {
        return b >= (1 << 20) ? (b >> 20) + " MiB" : (b >> 10) + " KiB";
    }

    /** The peer script: --peer, else ../shared/peers next to the repository, else the repository's copy. */
    private static Path findPeer(String explicit) {
        if (explicit != null) {
            return Files.isRegularFile(Path.of(explicit)) ? Path.of(explicit) : null;
        }
        return findScript("../shared/peers/torch_gloo_allreduce.py", "gpu-runtime/src/test/python/torch_gloo_allreduce.py");
    }

    /**
     * The first of {@code relative} (paths from the project's root) that exists, looked up from the working
     * directory and from the root this class was loaded from (a build's gpu-runtime/target/classes); null if none.
     */
    static Path findScript(String... relative) {
        List<Path> roots = new ArrayList<>();
        roots.add(Path.of("").toAbsolutePath());
        for (String e : System.getProperty("java.class.path").split(java.io.File.pathSeparator)) {
            if (e.endsWith("gpu-runtime/target/classes") || e.endsWith("gpu-runtime/target/classes/")) {
                roots.add(Path.of(e).toAbsolutePath().getParent().getParent().getParent());
            }
        }
        for (Path root : roots) {
            for (String r : relative) {
                Path p = root.resolve(r);
                if (Files.isRegularFile(p)) {
                    return p.normalize();
                }
            }
        }
        return null;
    }

    static boolean torchAvailable() {
        try {
            return run(List.of("/usr/bin/python3", "-c", "import torch.distributed"), 120) != null;
        } catch (Exception e) {
            return false;
        }
    }

    static String run(List<String> cmd, int timeoutS) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(timeoutS, TimeUnit.SECONDS) || p.exitValue() != 0) {
            p.destroyForcibly();
            return cmd.size() > 2 && cmd.get(1).equals("-c") ? null : out;
        }
        return out;
    }
}
