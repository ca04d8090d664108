package org.sparkatron.train;

import java.util.SplittableRandom;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Model FLOPs accounting, the project's one convention (docs/benchmarks.md): model FLOPs per token =
 * 6 N + 6 L T C, with N the parameters as saved (embedding used as the output layer included, vocabulary
 * padding excluded), L layers, T sequence length, C width; forward + backward, no recomputation counted,
 * causal attention counted once. Model FLOP/s per rank = the global batch's model FLOPs per step divided
 * by the step time and by the number of ranks (Megatron's "TFLOP/s per GPU"); MFU = that over the peak of
 * one rank's device: on a CPU the measured sgemm rate ({@link #sgemmGflops}), which is the practical
 * ceiling of a rank that computes with OpenBLAS.
 *
 * <p>Stateless and thread-safe; {@link #sgemmGflops} runs BLAS on the calling thread with the process's
 * OpenBLAS thread count.
 */
public final class ModelFlops {
    private ModelFlops() {
    }

    /** Parameters of the whole (unsharded) model as saved: vocabulary rows without padding. */
    public static long parameters(ModelConfig c) {
        long h = c.hidden();
        long v = c.vocabSize();
        boolean gpt2 = c.family() == ModelConfig.Family.GPT2;
        long bias = gpt2 ? 1 : 0;
        long ffn = c.ffnHidden();
        long up = gpt2 ? ffn : 2 * ffn; // llama: gate and up projections
        long qkv = c.qkvWidth();
        long perLayer = h * (1 + bias) // norm1
                + qkv * h + qkv * bias // fused q, k, v
                + h * (long) c.heads() * c.headDim() + h * bias // attention output
                + h * (1 + bias) // norm2
                + up * h + up * bias // mlp up (and gate)
                + h * ffn + h * bias; // mlp down
        long n = v * h + (gpt2 ? (long) c.maxPositions() * h : 0) + c.layers() * perLayer + h * (1 + bias);
        return c.tiedEmbeddings() ? n : n + v * h;
    }

    /** Model FLOPs per trained token at sequence length {@code seqLen}: 6 N + 6 L T C. */
    public static double perToken(ModelConfig c, int seqLen) {
        return 6.0 * parameters(c) + 6.0 * c.layers() * (double) seqLen * c.hidden();
    }

    /** Model FLOPs of one optimizer step over {@code samples} samples of {@code seqLen} tokens. */
    public static double perStep(ModelConfig c, int seqLen, long samples) {
        return perToken(c, seqLen) * seqLen * samples;
    }

    /**
     * A rank's CPU peak for MFU: the best 512^3 sgemm rate over at least 5 products and 0.3 s, so a moment of
     * contention on a shared machine does not pass for the peak (a peak measured too low would put MFU
     * above 100% once the machine quietens).
     */
    public static double sgemmPeakGflops() {
        double best = 0;
        long until = System.nanoTime() + 300_000_000L;
        for (int round = 0; round < 5 || System.nanoTime() < until; round++) {
            best = Math.max(best, sgemmGflops(512, 1));
            if (round > 200) {
                break;
            }
        }
        return best;
    }

    /**
     * This process's sgemm rate in GFLOP/s: the best of {@code reps} n x n x n products on the process's
     * threads ({@link Blas#threads()}), as the kernels run them. A rank at start-up uses
     * {@link #sgemmPeakGflops}.
     */
    public static double sgemmGflops(int n, int reps) {
        return sgemmGflops(n, reps, false);
    }

    /**
     * The benchmarks' ceiling ({@code ./sparkatron bench} reports it beside every step figure, n = 1024): as
     * {@link #sgemmGflops(int, int)}, each rep also running the product on OpenBLAS's own threads (what a program
     * calling OpenBLAS directly gets), and the better of the two.
     */
    public static double sgemmCeilingGflops(int n, int reps) {
        return sgemmGflops(n, reps, true);
    }

    private static double sgemmGflops(int n, int reps, boolean alsoOpenBlasThreads) {
        Tensor x = Tensor.allocateHost(DType.F32, n, n);
        Tensor y = Tensor.allocateHost(DType.F32, n, n);
        Tensor z = Tensor.allocateHost(DType.F32, n, n);
        SplittableRandom rng = new SplittableRandom(1);
        for (int i = 0; i < n * n; i++) {
            x.floats().put(i, (float) rng.nextDouble());
            y.floats().put(i, (float) rng.nextDouble());
        }
        double best = Double.MAX_VALUE;
        for (int rep = 0; rep < reps; rep++) {
            long t0 = System.nanoTime();
            Blas.sgemm(false, false, 1f, x, n, n, y, n, n, 0f, z);
            best = Math.min(best, (System.nanoTime() - t0) / 1e9);
            if (alsoOpenBlasThreads) {
                long t1 = System.nanoTime();
                Blas.sgemmOnOpenBlasThreads(x, y, z, n);
                best = Math.min(best, (System.nanoTime() - t1) / 1e9);
            }
        }
        return 2.0 * n * n * (double) n / best / 1e9;
    }
}
