package org.sparkatron.precision;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.device.TestDevices;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.MarkovCorpus;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/** fp16 dynamic loss scaling: the scaler's rules (Megatron's), and skipped steps in the training loop. */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class LossScalingTest {
    static ModelConfig tinyGpt2() throws Exception {
        return ModelConfig.fromJson(new ObjectMapper().readTree("{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":32,"
                + "\"n_head\":4,\"n_positions\":16,\"vocab_size\":40,\"sparkatron_vocab_multiple\":8}"));
    }

    static float[] arr(Transformer m, Tensor t) {
        return TestDevices.read(m.device(), t);
    }

    static Trainer trainer(Precision p, DynamicGradScaler.Config scaling) throws Exception {
        Transformer m = new Transformer(tinyGpt2(), new RankContext(TestDevices.create(), TensorParallel.none(), p));
        m.initialize(3);
        MarkovCorpus corpus = new MarkovCorpus(40, 3, 5);
        PackedSamples data = PackedSamples.perSequence(corpus.generate(64, 13, 6), 7);
        return new Trainer(m, data, Trainer.Options.defaults(8, LrSchedule.constant(1e-2)), GradientSync.NONE, scaling);
    }

    static int[] heldOut() {
        int[] out = new int[16 * 13];
        int i = 0;
        for (int[] seq : new MarkovCorpus(40, 3, 5).generate(16, 13, 99)) {
            System.arraycopy(seq, 0, out, i, 13);
            i += 13;
        }
        return out;
    }

    @Test
    void scalerFollowsMegatronsRules() {
        DynamicGradScaler s = new DynamicGradScaler(new DynamicGradScaler.Config(1024, 4, 2, 0.5, 3, 2));
        s.update(false);
        s.update(false);
        assertEquals(1024, s.scale());
        s.update(false); // third good step in a row: grow, refill hysteresis
        assertEquals(2048, s.scale());
        assertEquals(0, s.growthTracker());
        s.update(true); // first overflow: hysteresis 2 -> 1, no backoff yet
        assertEquals(2048, s.scale());
        assertEquals(1, s.hysteresisTracker());
        s.update(false); // a good step resets growth progress only; hysteresis stays at 1
        s.update(true); // hysteresis exhausted: back off
        assertEquals(1024, s.scale());
        assertEquals(0, s.growthTracker());
        s.update(true); // still exhausted: every overflow backs off now
        s.update(true);
        s.update(true);
        assertEquals(128, s.scale());
        for (int i = 0; i < 10; i++) {
            s.update(true);
        }
        assertEquals(4, s.scale(), "never below the minimum");
        assertTrue(s.atMinimum());
        s.update(false);
        s.update(false);
        s.update(false);
        assertEquals(8, s.scale());
        assertEquals(2, s.hysteresisTracker(), "growth refills the hysteresis");
        assertThrows(IllegalArgumentException.class, () -> new DynamicGradScaler.Config(1, 2, 2, 0.5, 3, 2));
        assertThrows(IllegalArgumentException.class, () -> new DynamicGradScaler.Config(8, 1, 1, 0.5, 3, 2));
        assertThrows(IllegalArgumentException.class, () -> new DynamicGradScaler.Config(8, 1, 2, 1.5, 3, 2));
        assertThrows(IllegalArgumentException.class, () -> new DynamicGradScaler.Config(8, 1, 2, 0.5, 0, 2));
    }

    /**
     * Starts at a scale of 2^40: the scaled dlogits (up to 2^40 / 104 tokens) overflow fp16 to infinity, so
     * the first steps are skipped, each leaving the weights, AdamW moments and step count bit-identical,
     * and the scale halves (hysteresis 1) until the gradients fit. Then training proceeds (the scale found
     * sits at the edge of fp16's range, so growth probes overflow again now and then, and is backed off),
     * and the loss falls like the fp32 run's on the same batches: last training loss and a held-out loss
     * within 0.02 nats (the fp16 logit error bound of MixedPrecisionModelTest, 3.7e-3 of logits up to ~5).
     */
    @Test
    void overflowSkipsTheStepBacksOffAndTrainingProceeds() throws Exception {
        Trainer tr = trainer(Precision.FP16, new DynamicGradScaler.Config(0x1p40, 1, 2, 0.5, 4, 1));
        Transformer m = tr.model();
        int skipped = 0;
        java.util.List<Boolean> skips = new java.util.ArrayList<>();
        double first = Double.NaN;
        double scale = 0x1p40;
        while (true) {
            float[] w = arr(m, m.params().weights());
            float[] mom1 = arr(m, tr.optimizer().firstMoment());
            float[] mom2 = arr(m, tr.optimizer().secondMoment());
            Trainer.StepMetrics sm = tr.step();
            skips.add(sm.skipped());
            assertEquals(scale, sm.lossScale(), "the step ran with the scaler's scale");
            if (!Double.isNaN(sm.loss()) && Double.isNaN(first)) {
                first = sm.loss();
            }
            if (!sm.skipped()) {
                assertEquals(1, sm.step(), "the first applied step is step 1");
                break;
            }
            skipped++;
            assertFalse(Double.isFinite(sm.gradNorm()), "a skipped step had non-finite gradients");
            assertEquals(0, sm.step(), "no optimizer step was taken");
            assertEquals(0, tr.optimizer().step());
            assertArrayEquals(w, arr(m, m.params().weights()), "weights untouched by a skipped step");
            assertArrayEquals(mom1, arr(m, tr.optimizer().firstMoment()), "first moments untouched");
            assertArrayEquals(mom2, arr(m, tr.optimizer().secondMoment()), "second moments untouched");
            assertTrue(sm.toJson().contains("\"skipped\": true"), sm.toJson());
            scale /= 2;
            assertEquals(scale, tr.lossScaler().scale(), "backed off by half");
        }
        // 2^40 / 2^k must come under ~65504 * 104 (the dlogits bound) before a step passes
        assertTrue(skipped >= 17 && skipped <= 40, "skipped " + skipped + " steps before the scale fit");
        double last = 0;
        double maxScale = 0;
        int skippedLater = 0;
        for (int s = 2; s <= 40; s++) {
            Trainer.StepMetrics sm = tr.step();
            skips.add(sm.skipped());
            maxScale = Math.max(maxScale, sm.lossScale());
            if (sm.skipped()) {
                skippedLater++; // growth probes the edge again: the scaler then backs off, as it should
            } else {
                last = sm.loss();
            }
        }
        assertTrue(skippedLater < 20, "most later steps are applied (" + skippedLater + " skipped)");

        // The skipped steps consumed their batches: the fp32 reference skips the same batches, so both runs
        // apply the same updates to the same data and differ by fp16 rounding alone.
        Trainer ref = trainer(Precision.FP32, null);
        double refLast = 0;
        for (boolean skip : skips) {
            if (skip) {
                ref.data().skip(8);
            } else {
                refLast = ref.step().loss();
            }
        }
        assertEquals(tr.optimizer().step(), ref.optimizer().step());
        int[] held = heldOut();
        double evalHalf = m.loss(held, 16, 12, null);
        double evalRef = ref.model().loss(held, 16, 12, null);
        System.out.printf("fp16: %d + %d skipped, training loss %.4f -> %.4f (fp32 %.4f); held-out loss after %d steps %.4f (fp32 %.4f); scale %.0f%n",
                skipped, skippedLater, first, last, refLast, tr.optimizer().step(), evalHalf, evalRef, tr.lossScaler().scale());
        assertEquals(refLast, last, 0.02, "fp16 last training loss vs fp32 on the same batch");
        assertTrue(first - last > 1, "fp16 training reduces the loss");
        assertEquals(evalRef, evalHalf, 0.02, "fp16 held-out loss vs fp32 after the same number of applied steps");
    }

    /** From a safe scale, 2^8, the scale doubles after every 4 good steps: 2^11 after 12 applied steps. */
    @Test
    void scaleGrowsAfterGoodSteps() throws Exception {
        Trainer tr = trainer(Precision.FP16, new DynamicGradScaler.Config(256, 1, 2, 0.5, 4, 2));
        for (int s = 1; s <= 12; s++) {
            Trainer.StepMetrics sm = tr.step();
            assertFalse(sm.skipped(), "step " + s + " fits fp16 at scale " + sm.lossScale());
            assertEquals(256 * Math.pow(2, (s - 1) / 4), sm.lossScale(), "scale at step " + s);
            assertEquals(s, sm.step());
        }
        assertEquals(2048, tr.lossScaler().scale());
    }

    @Test
    void overflowAtTheMinimumScaleStopsTraining() throws Exception {
        Trainer tr = trainer(Precision.FP16, new DynamicGradScaler.Config(1, 1, 2, 0.5, 4, 1));
        // a norm weight of 1e6 makes the first block's normalised activations overflow fp16
        Tensor w = tr.model().params().weight("layers.0.norm1.w");
        float[] v = TestDevices.read(tr.model().device(), w);
        v[0] = 1e6f;
        TestDevices.write(tr.model().device(), w, v);
        IllegalStateException e = assertThrows(IllegalStateException.class, tr::step);
        assertTrue(e.getMessage().contains("minimum loss scale"), e.getMessage());
    }

    @Test
    void lossScalingOnlyForFp16() throws Exception {
        assertThrows(IllegalArgumentException.class, () -> trainer(Precision.BF16, DynamicGradScaler.Config.defaults()));
        assertThrows(IllegalArgumentException.class, () -> trainer(Precision.FP16, null));
        Trainer bf = trainer(Precision.BF16, null);
        Trainer.StepMetrics sm = bf.step();
        assertEquals(1, sm.lossScale());
        assertFalse(sm.toJson().contains("skipped"), "fp32/bf16 step lines are unchanged: " + sm.toJson());
    }
}
