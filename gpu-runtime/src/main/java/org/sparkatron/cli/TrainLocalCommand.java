package org.sparkatron.cli;

import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.TreeMap;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.precision.Fp8Recipe;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.Evaluator;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.IntervalStats;
import org.sparkatron.train.ModelFlops;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.TokenFile;
import org.sparkatron.train.Trainer;
import org.sparkatron.train.track.LossPlot;
import org.sparkatron.train.track.TensorBoardEvents;

/**
 * {@code ./sparkatron train-local}: trains a model directory on a token file in this process. Standard output
 * gets one JSON line per step (and one per evaluation, {@code "kind": "eval"}); standard error gets one
 * Megatron-style line per log interval ({@link IntervalStats}) and per evaluation, and the closing summary.
 * With {@code --valid-tokens} the validation file is scored every {@code --eval-interval} steps and at the end
 * ({@link Evaluator}, {@code --eval-iters} batches, continuing through its samples); {@code --out} also gets
 * {@code metrics.jsonl} and {@code loss.svg}; {@code --tensorboard-dir} gets TensorBoard events.
 */
final class TrainLocalCommand {
    private TrainLocalCommand() {
    }

    static void run(Args a, PrintStream out, PrintStream err) throws IOException {
        Path modelDir = a.path("model");
        Inputs.Spec inputSpec = Inputs.parse(a);
        int steps = a.requiredInt("steps");
        Path outDir = a.path("out");
        double lr = a.number("lr", 3e-4);
        double minLr = a.number("min-lr", lr / 10);
        int warmup = a.integer("warmup", 0);
        int batch = a.integer("batch", 4);
        int micro = a.integer("micro-batches", 1);
        int seqLen = a.integer("seq-len", -1);
        float wd = (float) a.number("weight-decay", 0.1);
        float clip = (float) a.number("grad-clip", 1.0);
        long seed = a.integer("seed", 0);
        Precision precision = Precision.parse(a.string("precision", "fp32"));
        Fp8Recipe fp8 = Sparkatron.fp8Options(a, precision);
        int logInterval = a.integer("log-interval", Math.max(1, Math.min(100, steps / 20)));
        String validFile = a.string("valid-tokens", null);
        int evalInterval = a.integer("eval-interval", Math.max(1, steps / 10));
        int evalIters = a.integer("eval-iters", 10);
        String tbDir = a.string("tensorboard-dir", null);
        Sparkatron.setThreads(a);
        a.rejectUnknown();
        if (steps < 1 || logInterval < 1 || evalInterval < 0 || evalIters < 1) {
            throw new IllegalArgumentException("--steps, --log-interval and --eval-iters must be >= 1 and --eval-interval >= 0");
        }
        Sparkatron.refuseOverwritingInput(outDir, modelDir, "--model");
        Transformer model = ModelStore.load(modelDir, new RankContext(new CpuDevice(), TensorParallel.none(), precision, fp8));
        var input = inputSpec.read(modelDir, model.config().vocabSize());
        List<int[]> seqs = input.sequences();
        PackedSamples data = Sparkatron.samples(seqs, seqLen, model.config(), seed);
        int t = data.sampleLength() - 1;
        Evaluator evaluator = null;
        if (validFile != null) {
            PackedSamples valid = Sparkatron.samples(TokenFile.read(Path.of(validFile), model.config().vocabSize()), t, model.config(), seed + 1);
            if (valid.sampleLength() != data.sampleLength()) {
                throw new IllegalArgumentException("--valid-tokens samples have " + (valid.sampleLength() - 1) + " tokens, training samples "
                        + t + ": pass --seq-len");
            }
            evaluator = new Evaluator(model, valid, batch, micro, 1, GradientSync.NONE);
        }
        Trainer trainer = new Trainer(model, data, new Trainer.Options(batch, micro, new LrSchedule(lr, minLr, warmup, steps), 0.9f, 0.95f,
                1e-8f, wd, clip));
        double peak = ModelFlops.sgemmPeakGflops() * 1e9;
        IntervalStats interval = new IntervalStats((long) batch * micro, t, ModelFlops.perStep(model.config(), t, (long) batch * micro), 1, peak);
        err.printf(java.util.Locale.ROOT, "[sparkatron] %,d parameters, %.3g GFLOP per step (6N + 6LTC per token), peak %.1f GFLOP/s "
                + "(measured sgemm); %s%n", ModelFlops.parameters(model.config()), ModelFlops.perStep(model.config(), t, (long) batch * micro) / 1e9,
                peak / 1e9, evaluator == null ? "no validation (--valid-tokens)" : "validation every " + evalInterval + " steps and at the end");
        Files.createDirectories(outDir);
        TreeMap<Long, Double> losses = new TreeMap<>();
        TreeMap<Long, Double> validLosses = new TreeMap<>();
        double firstMean = Double.NaN;
        IntervalStats.Interval last = null;
        try (PrintStream metrics = new PrintStream(Files.newOutputStream(outDir.resolve("metrics.jsonl")), true, StandardCharsets.UTF_8);
             TensorBoardEvents tb = tensorboard(tbDir)) {
            for (int s = 1; s <= steps; s++) {
                Trainer.StepMetrics m = trainer.step();
                emit(out, metrics, m.toJson());
                losses.put(m.step(), m.loss());
                if (tb != null) {
                    tb.scalar("train/loss", m.step(), m.loss(), now());
                    tb.scalar("train/lr", m.step(), m.lr(), now());
                }
                interval.add(m);
                if (s % logInterval == 0 || s == steps) {
                    last = interval.finish();
                    firstMean = Double.isNaN(firstMean) ? last.loss() : firstMean;
                    err.println("[sparkatron] " + last.describe(steps, Double.NaN));
                    if (tb != null) {
                        tb.scalar("throughput/tokens_per_s", s, last.tokensPerSecond(), now());
                        tb.scalar("throughput/mfu", s, last.mfu(), now());
                    }
                }
                if (evaluator != null && (s == steps || (evalInterval > 0 && s % evalInterval == 0))) {
                    Evaluator.Evaluation e = evaluator.run(s, evalIters);
                    emit(out, metrics, e.toJson());
                    validLosses.put(e.step(), e.loss());
                    err.println("[sparkatron] " + e.describe());
                    if (tb != null) {
                        tb.scalar("valid/loss", s, e.loss(), now());
                    }
                }
            }
        }
        Files.writeString(outDir.resolve("loss.svg"), LossPlot.ofHistory("sparkatron train-local: " + modelDir.getFileName(), losses,
                validLosses, logInterval));
        ModelStore.save(model, outDir);
        Inputs.keepTokenizer(input, modelDir, outDir);
        err.printf(java.util.Locale.ROOT, "[sparkatron] done: training loss (mean of a log interval) %.4f at steps 1-%d -> %.4f at steps %d-%d%s%n",
                firstMean, Math.min(logInterval, steps), last.loss(), last.firstStep(), last.lastStep(), validLosses.isEmpty() ? ""
                        : String.format(java.util.Locale.ROOT, "; validation loss %.4f at step %d -> %.4f at step %d", validLosses.firstEntry().getValue(),
                        validLosses.firstKey(), validLosses.lastEntry().getValue(), validLosses.lastKey()));
    }

    private static void emit(PrintStream out, PrintStream metrics, String line) {
        out.println(line);
        metrics.println(line);
    }

    private static TensorBoardEvents tensorboard(String dir) throws IOException {
        if (dir == null) {
            return null;
        }
        Path d = Path.of(dir);
        Files.createDirectories(d);
        OutputStream o = Files.newOutputStream(d.resolve(TensorBoardEvents.fileName(System.currentTimeMillis(),
                java.net.InetAddress.getLocalHost().getHostName())));
        return new TensorBoardEvents(o, now());
    }

    private static double now() {
        return System.currentTimeMillis() / 1000.0;
    }
}
