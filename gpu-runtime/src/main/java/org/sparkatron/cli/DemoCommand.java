package org.sparkatron.cli;

import java.io.PrintStream;
import java.util.List;
import java.util.Locale;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.train.MarkovCorpus;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * {@code ./sparkatron demo-local}: trains a small GPT-2 in this process on a generated Markov-chain
 * language and reports held-out loss and accuracy against the chain's own limits, so a reader sees
 * that learning happened and how close to perfect it got.
 */
final class DemoCommand {
    private DemoCommand() {
    }

    static void run(Args a, PrintStream out) {
        int steps = a.integer("steps", 300);
        Sparkatron.setThreads(a);
        a.rejectUnknown();
        int vocab = 256;
        int t = 64;
        int batch = 16;
        MarkovCorpus lang = new MarkovCorpus(vocab, 4, 1234);
        List<int[]> train = lang.generate(4000, t + 1, 1);
        List<int[]> heldOut = lang.generate(64, t + 1, 2);
        ModelConfig cfg = new ModelConfig(ModelConfig.Family.GPT2, 2, 128, 4, 4, 512, vocab, t, 1e-5f, 0, true,
                ModelConfig.DEFAULT_VOCAB_MULTIPLE);
        Transformer model = new Transformer(cfg, new CpuDevice());
        model.initialize(0);
        out.printf(Locale.ROOT, "demo-local: GPT-2 %d layers, width %d, %d heads, vocab %d; %d training sequences of %d tokens%n",
                cfg.layers(), cfg.hidden(), cfg.heads(), vocab, train.size(), t + 1);
        double before = evaluate(model, heldOut, lang, t)[0];
        Trainer trainer = new Trainer(model, PackedSamples.perSequence(train, 0),
                Trainer.Options.defaults(batch, new LrSchedule(3e-3, 3e-4, 20, steps)));
        for (int s = 0; s < steps; s++) {
            Trainer.StepMetrics m = trainer.step();
            if (m.step() == 1 || m.step() % 25 == 0 || m.step() == steps) {
                out.println(m.toJson());
            }
        }
        double[] after = evaluate(model, heldOut, lang, t);
        out.printf(Locale.ROOT, "held-out loss: %.3f before training -> %.3f after (uniform guessing: %.3f, the language's entropy rate: %.3f)%n",
                before, after[0], Math.log(vocab), lang.entropyRate(heldOut));
        out.printf(Locale.ROOT, "held-out next-token accuracy: %.1f%% (chance: %.1f%%, best possible: %.1f%%)%n",
                100 * after[1], 100.0 / vocab, 100 * lang.bestAccuracy(heldOut));
        out.printf(Locale.ROOT, "{\"heldout_loss_before\": %.4f, \"heldout_loss\": %.4f, \"entropy_rate\": %.4f, \"accuracy\": %.4f, \"best_accuracy\": %.4f}%n",
                before, after[0], lang.entropyRate(heldOut), after[1], lang.bestAccuracy(heldOut));
    }

    /** {mean loss, argmax accuracy} on the held-out sequences. */
    private static double[] evaluate(Transformer model, List<int[]> seqs, MarkovCorpus lang, int t) {
        int b = seqs.size();
        int[] batch = new int[b * (t + 1)];
        for (int i = 0; i < b; i++) {
            System.arraycopy(seqs.get(i), 0, batch, i * (t + 1), t + 1);
        }
        double loss = model.loss(batch, b, t, null);
        float[] logits = model.logits(batch, b, t);
        int v = lang.vocab();
        long correct = 0;
        for (int i = 0; i < b; i++) {
            for (int p = 0; p < t; p++) {
                int row = i * t + p;
                int best = 0;
                for (int j = 1; j < v; j++) {
                    if (logits[row * v + j] > logits[row * v + best]) {
                        best = j;
                    }
                }
                correct += best == batch[i * (t + 1) + p + 1] ? 1 : 0;
            }
        }
        return new double[] {loss, (double) correct / (b * t)};
    }
}
