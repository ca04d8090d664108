package org.sparkatron.device.cuda;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * The GPU benchmark's Sparkatron side (run by {@code ./sparkatron gpu-check} beside PyTorch eager and
 * torch.compile on the same model, {@code gpu-runtime/src/bench/python/torch_gpt2_gpu.py}): training steps
 * of a GPT-2 (learned positions, tanh GELU, tied embedding) in bf16 with fp32 master weights on CUDA device
 * 0, random tokens. Prints one line in the PyTorch script's format: median step time, tokens/s, TFLOP/s and
 * MFU against 989 TFLOP/s, FLOPs counted as 6N + 6LCT per token.
 *
 * <p>With a list of precisions ({@code bf16,fp8}) it runs the same model, weights and batches once per
 * precision in this process (one after the other, each on a fresh device) and ends with the ratio of each
 * run's tokens/s to the first run's and the difference of their last losses (FP8 against bf16 on the same
 * GPU in the same call: the issue 17 benchmark).
 *
 * <p>Usage: {@code GpuBench L D H T V B steps [bf16|fp8|bf16,fp8]}
 */
public final class GpuBench {
    private GpuBench() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 7 && args.length != 8) {
            System.err.println("usage: GpuBench L D H T V B steps [bf16|fp8|bf16,fp8]   (layers, width, heads, sequence, vocab, batch,"
                    + " timed steps, precisions)");
            System.exit(2);
        }
        int[] a = Arrays.stream(args).limit(7).mapToInt(Integer::parseInt).toArray();
        String[] precisions = (args.length == 8 ? args[7] : "bf16").split(",");
        int l = a[0], d = a[1], h = a[2], t = a[3], v = a[4], b = a[5], steps = a[6];
        CudaRuntime.Availability av = CudaRuntime.availability();
        if (!av.available()) {
            System.out.println("sparkatron-cuda: CUDA unavailable (" + av.reason() + ")");
            System.exit(1);
        }
        String json = String.format(Locale.ROOT, "{\"model_type\": \"gpt2\", \"n_layer\": %d, \"n_embd\": %d, \"n_head\": %d, "
                + "\"n_positions\": %d, \"vocab_size\": %d, \"layer_norm_epsilon\": 1e-05}", l, d, h, t, v);
        ModelConfig cfg = ModelConfig.fromJson(new com.fasterxml.jackson.databind.ObjectMapper().readTree(json));
        SplittableRandom rng = new SplittableRandom(0);
        List<int[]> seqs = new ArrayList<>();
        for (int i = 0; i < 4 * b; i++) {
            seqs.add(rng.ints(t + 1, 0, v).toArray());
        }
        double[] tokensPerS = new double[precisions.length];
        double[] lastLoss = new double[precisions.length];
        for (int r = 0; r < precisions.length; r++) {
            Precision precision = Precision.parse(precisions[r]);
            try (CudaDevice device = new CudaDevice(0)) {
                System.err.println("device: " + device.describe() + ", " + precision.label());
                Transformer model = new Transformer(cfg, new org.sparkatron.parallel.RankContext(device,
                        org.sparkatron.parallel.TensorParallel.none(), precision));
                model.initialize(1);
                Trainer trainer = new Trainer(model, PackedSamples.perSequence(seqs, 1), Trainer.Options.defaults(b, LrSchedule.constant(3e-4)));
                for (int i = 0; i < 2; i++) {
                    trainer.step();
                }
                double[] times = new double[steps];
                for (int i = 0; i < steps; i++) {
                    long t0 = System.nanoTime();
                    lastLoss[r] = trainer.step().loss();
                    times[i] = (System.nanoTime() - t0) / 1e9;
                }
                Arrays.sort(times);
                double med = times[steps / 2];
                long n = model.params().numel();
                double flops = 6.0 * n * b * t + 6.0 * l * d * (double) t * b * t;
                tokensPerS[r] = b * t / med;
                System.out.printf(Locale.ROOT, "sparkatron-cuda %s params=%d step_median_s=%.4f tokens_per_s=%.0f tflops=%.1f mfu=%.1f%%"
                        + " loss_after_%d_steps=%.4f (%s)%n", precision.label(), n, med, tokensPerS[r], flops / med / 1e12,
                        flops / med / 989e12 * 100, steps + 2, lastLoss[r], device.memory());
                trainer.close();
                model.close();
            }
        }
        for (int r = 1; r < precisions.length; r++) {
            System.out.printf(Locale.ROOT, "sparkatron-cuda %s/%s tokens_per_s_ratio=%.3f loss_difference=%.4f%n", precisions[r], precisions[0],
                    tokensPerS[r] / tokensPerS[0], lastLoss[r] - lastLoss[0]);
        }
    }
}
