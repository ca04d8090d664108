package org.sparkatron.bench;

import java.io.PrintStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.sparkatron.device.KernelProxy;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MoeKernels;

/**
 * Where a step's time goes by kernel: a proxy around a CPU device's {@link Kernels} that adds up the wall time
 * and calls of each kernel method, and the FLOPs of the GEMM-backed linear layers (forward {@code 2 n in out},
 * backward {@code 2 n in out} for dx when asked and as much for dw), for {@code ./sparkatron bench --profile}.
 * Exact on the CPU device, whose kernels run on the calling thread before they return; on a device that
 * queues its kernels it would time the queueing. The proxy costs about a microsecond per call. For
 * benchmarks only; one rank's thread.
 */
public final class KernelProfile {
    private final Map<String, long[]> byKernel = new HashMap<>(); // name -> {calls, nanos, flops}

    /** {@code k} with every call timed into this profile, its MoE kernels' ({@link Kernels#moe()}) as {@code moe.<name>}. */
    public Kernels wrap(Kernels k) {
        return KernelProxy.wrap(k, (method, args, call) -> {
            long t0 = System.nanoTime();
            try {
                return call.proceed();
            } finally {
                String name = method.getDeclaringClass() == MoeKernels.class ? "moe." + method.getName() : method.getName();
                long[] acc = byKernel.computeIfAbsent(key(name, args), x -> new long[3]);
                acc[0]++;
                acc[1] += System.nanoTime() - t0;
                acc[2] += flops(name, args);
            }
        });
    }

    /** The table's row: the kernel, and for the linear layers their shape ({@code rows x in -> out}). */
    private static String key(String name, Object[] a) {
        if (name.equals("linearForward")) {
            return name + " " + a[4] + "x" + a[5] + "->" + a[6];
        }
        if (name.equals("linearBackward")) {
            return name + " " + a[7] + "x" + a[8] + "->" + a[9];
        }
        return name;
    }

    private static long flops(String name, Object[] a) {
        if (name.equals("linearForward")) { // (out, x, w, bias, n, in, outF)
            return 2L * (int) a[4] * (int) a[5] * (int) a[6];
        }
        if (name.equals("linearBackward")) { // (dx, accumulateDx, dw, dbias, dout, x, w, n, in, outF)
            long one = 2L * (int) a[7] * (int) a[8] * (int) a[9];
            return (a[0] != null ? one : 0) + (a[2] != null ? one : 0);
        }
        return 0;
    }

    public void reset() {
        byKernel.clear();
    }

    /**
     * The table: each kernel's calls and milliseconds per step, share of the step, and for the linear layers their
     * GFLOP/s against {@code sgemmGflops}; then the time outside every kernel (the host between calls, copies,
     * collectives). Kernels taking less than 0.1% of the step are summed in one line.
     */
    public void print(PrintStream out, int steps, double stepSeconds, double sgemmGflops) {
        List<Map.Entry<String, long[]>> rows = new ArrayList<>(byKernel.entrySet());
        rows.sort((x, y) -> Long.compare(y.getValue()[1], x.getValue()[1]));
        double stepMs = stepSeconds * 1e3;
        double inKernels = 0;
        double small = 0;
        int smallCount = 0;
        out.printf(Locale.ROOT, "%-36s %8s %10s %7s %10s %9s%n", "kernel", "calls", "ms/step", "share", "GFLOP/s", "of sgemm");
        for (Map.Entry<String, long[]> e : rows) {
            long[] v = e.getValue();
            double ms = v[1] / 1e6 / steps;
            inKernels += ms;
            if (ms < stepMs * 1e-3) {
                small += ms;
                smallCount++;
                continue;
            }
            String rate = v[2] == 0 ? "" : String.format(Locale.ROOT, "%10.1f %8.1f%%", v[2] / (v[1] / 1e9) / 1e9,
                    100 * v[2] / (v[1] / 1e9) / 1e9 / sgemmGflops);
            out.printf(Locale.ROOT, "%-36s %8.1f %10.1f %6.1f%% %s%n", e.getKey(), v[0] / (double) steps, ms, 100 * ms / stepMs, rate);
        }
        if (smallCount > 0) {
            out.printf(Locale.ROOT, "%-36s %8s %10.1f %6.1f%%%n", smallCount + " others", "", small, 100 * small / stepMs);
        }
        out.printf(Locale.ROOT, "%-36s %8s %10.1f %6.1f%%%n", "outside kernels", "", stepMs - inKernels, 100 * (stepMs - inKernels) / stepMs);
        long nanos = 0;
        long flops = 0;
        for (long[] v : byKernel.values()) {
            if (v[2] > 0) {
                nanos += v[1];
                flops += v[2];
            }
        }
        if (flops > 0) {
            double gflops = flops / (nanos / 1e9) / 1e9;
            out.printf(Locale.ROOT, "%-36s %8s %10.1f %6.1f%% %10.1f %8.1f%%%n", "all linear layers (GEMMs)", "",
                    nanos / 1e6 / steps, 100 * nanos / 1e6 / steps / stepMs, gflops, 100 * gflops / sgemmGflops);
        }
    }
}
