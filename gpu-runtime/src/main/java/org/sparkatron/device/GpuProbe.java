package org.sparkatron.device;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;

/**
 * Finds the GPU stack on this machine WITHOUT loading any of it: the CUDA driver ({@code libcuda.so.1}),
 * cuBLAS and cuBLASLt ({@code libcublas.so.13}, {@code libcublasLt.so.13}), NCCL ({@code libnccl.so.2}),
 * {@code nvcc}, and the GPU device nodes ({@code /dev/nvidiactl}, {@code /dev/nvidia0}...). It only looks at
 * files (and reads {@code ldconfig -p}), so no CUDA class or JNI library enters the JVM: a machine without
 * a GPU is told precisely what is missing and runs on the CPU device.
 *
 * <p>Where it looks ({@link #system()}): {@code LD_LIBRARY_PATH}, the usual library directories (Debian and
 * Red Hat multiarch dirs, {@code /usr/local/cuda/lib64}, {@code /usr/local/cuda/targets/x86_64-linux/lib},
 * WSL's {@code /usr/lib/wsl/lib}), and the dynamic loader's cache ({@code ldconfig -p}); {@code nvcc} on
 * {@code PATH} and in {@code /usr/local/cuda/bin}. Tests give their own directories
 * ({@link #GpuProbe(List, List, Path, boolean)}).
 *
 * <p>Device choice: the CUDA device needs the driver, cuBLAS, cuBLASLt and a device node; NCCL is needed
 * only by multi-rank jobs and nvcc only to build kernels. {@link Report#device()} says which device a rank
 * given a GPU would use, {@link Report#reason()} why (what is missing); {@code CudaRuntime} then loads the
 * driver to confirm.
 *
 * <p>Stateless and thread-safe; {@link #probe()} blocks for at most about 5 seconds (ldconfig).
 */
public final class GpuProbe {
    /** One library or tool the GPU stack needs: what it is for, and the file name looked for. */
    public record Component(String what, String file, boolean requiredForCuda) {
    }

    /** The components, in report order. */
    public static final List<Component> COMPONENTS = List.of(
            new Component("CUDA driver", "libcuda.so.1", true),
            new Component("cuBLAS", "libcublas.so.13", true),
            new Component("cuBLASLt", "libcublasLt.so.13", true),
            new Component("NCCL (multi-rank GPU jobs)", "libnccl.so.2", false),
            new Component("nvcc (kernel build)", "nvcc", false));

    /** What was found: each component's path (empty when missing), the device nodes, and the choice. */
    public record Report(Map<Component, Optional<Path>> found, List<Path> deviceNodes, List<Path> searched) {
        /** The components that are missing, in order. */
        public List<Component> missing() {
            List<Component> out = new ArrayList<>();
            found.forEach((c, p) -> {
                if (p.isEmpty()) {
                    out.add(c);
                }
            });
            return out;
        }

        /** True when the driver, cuBLAS, cuBLASLt and a GPU device node are all present. */
        public boolean cudaStackPresent() {
            return !deviceNodes.isEmpty() && missing().stream().noneMatch(Component::requiredForCuda);
        }

        /**
         * The device a rank given a GPU would run on, judged from files alone: "cuda" when the stack is present
         * (the CUDA device then confirms it by loading the driver, {@code CudaRuntime}), else "cpu".
         */
        public String device() {
            return cudaStackPresent() ? "cuda" : "cpu";
        }

        /** Why that device: the missing pieces, or that the stack is present but the CUDA device is not built yet. */
        public String reason() {
            List<String> gaps = new ArrayList<>();
            for (Component c : missing()) {
                if (c.requiredForCuda()) {
                    gaps.add(c.file() + " (" + c.what() + ")");
                }
            }
            if (deviceNodes.isEmpty()) {
                gaps.add("/dev/nvidia* (no GPU device node)");
            }
            if (!gaps.isEmpty()) {
                return "cuda unavailable: missing " + String.join(", ", gaps);
            }
            return "cuda: the driver, cuBLAS, cuBLASLt and a GPU device node are present";
        }

        /** A human-readable table, one line per component, then the device line. */
        public String describe() {
            StringBuilder sb = new StringBuilder();
            for (Map.Entry<Component, Optional<Path>> e : found.entrySet()) {
                Component c = e.getKey();
                sb.append(String.format("%-28s %-18s %s%n", c.what(), c.file(),
                        e.getValue().map(p -> "found " + p).orElse("MISSING")));
            }
            sb.append(String.format("%-28s %-18s %s%n", "GPU device nodes", "/dev/nvidia*",
                    deviceNodes.isEmpty() ? "MISSING" : "found " + deviceNodes));
            sb.append("searched: ").append(searched.size()).append(" directories and the ldconfig cache\n");
            sb.append("device: ").append(device()).append(" (").append(reason()).append(")");
            return sb.toString();
        }
    }

    private final List<Path> libDirs;
    private final List<Path> binDirs;
    private final Path devDir;
    private final boolean useLdconfig;

    /**
     * @param libDirs     directories searched for the libraries, in order
     * @param binDirs     directories searched for nvcc
     * @param devDir      where GPU device nodes live ({@code /dev} on a real machine)
     * @param useLdconfig also consult {@code ldconfig -p} (off in tests, so the machine's own libraries
     *                    cannot leak into a test's fake directories)
     */
    public GpuProbe(List<Path> libDirs, List<Path> binDirs, Path devDir, boolean useLdconfig) {
        this.libDirs = List.copyOf(libDirs);
        this.binDirs = List.copyOf(binDirs);
        this.devDir = devDir;
        this.useLdconfig = useLdconfig;
    }

    /** A probe of this machine's usual locations, LD_LIBRARY_PATH, PATH and the loader cache. */
    public static GpuProbe system() {
        LinkedHashSet<Path> libs = new LinkedHashSet<>();
        addPathList(libs, System.getenv("LD_LIBRARY_PATH"));
        for (String d : new String[] {"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib",
            "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"}) {
            libs.add(Path.of(d));
        }
        LinkedHashSet<Path> bins = new LinkedHashSet<>();
        addPathList(bins, System.getenv("PATH"));
        bins.add(Path.of("/usr/local/cuda/bin"));
        return new GpuProbe(new ArrayList<>(libs), new ArrayList<>(bins), Path.of("/dev"), true);
    }

    private static void addPathList(LinkedHashSet<Path> out, String list) {
        if (list == null) {
            return;
        }
        for (String s : list.split(":")) {
            if (!s.isBlank()) {
                out.add(Path.of(s));
            }
        }
    }

    /** Looks for every component; never throws for missing or unreadable locations. */
    public Report probe() {
        Map<String, Path> cache = useLdconfig ? ldconfigCache() : Map.of();
        Map<Component, Optional<Path>> found = new LinkedHashMap<>();
        for (Component c : COMPONENTS) {
            boolean tool = c.file().equals("nvcc");
            Optional<Path> hit = find(tool ? binDirs : libDirs, c.file());
            if (hit.isEmpty() && !tool && cache.containsKey(c.file())) {
                hit = Optional.of(cache.get(c.file()));
            }
            found.put(c, hit);
        }
        List<Path> nodes = new ArrayList<>();
        for (String n : new String[] {"nvidiactl", "nvidia0"}) {
            Path p = devDir.resolve(n);
            if (Files.exists(p)) {
                nodes.add(p);
            }
        }
        List<Path> searched = new ArrayList<>(libDirs);
        searched.addAll(binDirs);
        return new Report(found, nodes, searched);
    }

    private static Optional<Path> find(List<Path> dirs, String file) {
        for (Path d : dirs) {
            Path p = d.resolve(file);
            if (Files.isRegularFile(p) || Files.isSymbolicLink(p) && Files.exists(p)) {
                return Optional.of(p);
            }
        }
        return Optional.empty();
    }

    /** {@code ldconfig -p}: "name (flags) => path" lines, for existing files; empty when ldconfig is absent. */
    static Map<String, Path> ldconfigCache() {
        Map<String, Path> out = new LinkedHashMap<>();
        for (String exe : new String[] {"/sbin/ldconfig", "/usr/sbin/ldconfig", "/sbin/ldconfig.real"}) {
            if (!Files.isExecutable(Path.of(exe))) {
                continue;
            }
            try {
                Process p = new ProcessBuilder(exe, "-p").redirectErrorStream(true).start();
                try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
                    out.putAll(parseLdconfig(r.lines().toList()));
                }
                if (!p.waitFor(5, TimeUnit.SECONDS)) {
                    p.destroyForcibly();
                }
                return out;
            } catch (IOException e) {
                return out; // no cache: the directory search alone decides
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return out;
            }
        }
        return out;
    }

    /** Parses {@code ldconfig -p} output lines (first occurrence of a name wins, existing files only). */
    static Map<String, Path> parseLdconfig(List<String> lines) {
        Map<String, Path> out = new LinkedHashMap<>();
        for (String line : lines) {
            int arrow = line.indexOf(" => ");
            int paren = line.indexOf(" (");
            if (arrow < 0 || paren < 0 || paren > arrow) {
                continue;
            }
            String name = line.substring(0, paren).trim();
            Path path = Path.of(line.substring(arrow + 4).trim());
            if (Files.exists(path)) {
                out.putIfAbsent(name, path);
            }
        }
        return out;
    }

    /** {@code ./sparkatron gpu-info}: prints the report; exit status 0 (a machine without a GPU is not an error). */
    public static void main(String[] argv) {
        org.sparkatron.cli.Cli.main("gpu-info", "usage: ./sparkatron gpu-info\n"
                + "  which GPU libraries this machine has, and the device a rank would use", argv, args -> {
                    if (args.length > 0) {
                        throw new org.sparkatron.cli.Cli.UsageException("gpu-info takes no options, got " + String.join(" ", args));
                    }
                    Report report = system().probe();
                    System.out.println(report.describe());
                    if (report.cudaStackPresent() || org.sparkatron.device.cuda.CudaRuntime.emulationRequested()) {
                        // the files are there: now load the driver binding (behind CudaRuntime's LinkageError probe)
                        System.out.println(org.sparkatron.device.cuda.CudaRuntime.describe());
                    }
                    return org.sparkatron.cli.Cli.OK;
                });
    }
}
