package org.sparkatron.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** Interval aggregation: averages, throughput, FLOP/s and MFU from hand-made steps; skipped steps as Megatron counts them. */
class IntervalStatsTest {
    @Test
    void averagesLossAndThroughputOverTheInterval() {
        // global batch 8 samples of 16 tokens, 1e12 FLOPs per step, 2 ranks, peak 1e12 FLOP/s per rank
        IntervalStats s = new IntervalStats(8, 16, 1e12, 2, 1e12);
        s.add(new Trainer.StepMetrics(1, 3.0, 1e-3, 2.0, 0, 0.5));
        s.add(new Trainer.StepMetrics(2, 2.0, 2e-3, 1.5, 0, 1.5));
        IntervalStats.Interval i = s.finish();
        assertEquals(1, i.firstStep());
        assertEquals(2, i.lastStep());
        assertEquals(2.5, i.loss(), 1e-12);
        assertEquals(1.5, i.gradNorm(), 0, "the last step's, as Megatron logs it");
        assertEquals(2e-3, i.lr(), 0);
        assertEquals(2.0, i.seconds(), 1e-12);
        assertEquals(16, i.samples());
        assertEquals(256, i.tokens());
        assertEquals(128.0, i.tokensPerSecond(), 1e-9);
        assertEquals(8.0, i.samplesPerSecond(), 1e-9);
        assertEquals(0.5, i.tflopsPerRank(), 1e-12, "2e12 FLOPs / 2 s / 2 ranks");
        assertEquals(0.5, i.mfu(), 1e-12);
        assertEquals(0, s.size(), "finish starts a new interval");
        assertThrows(IllegalStateException.class, s::finish);
        assertTrue(i.toJson().contains("\"kind\": \"interval\""), i.toJson());
    }

    @Test
    void skippedStepsCountForThroughputButNotForTheLoss() {
        IntervalStats s = new IntervalStats(4, 8, 1e9, 1, 0);
        s.add(new Trainer.StepMetrics(0, 50.0, 1e-3, Double.POSITIVE_INFINITY, 0, 1.0, true, 65536));
        s.add(new Trainer.StepMetrics(1, 4.0, 1e-3, 1.0, 0, 1.0, false, 32768));
        IntervalStats.Interval i = s.finish();
        assertEquals(1, i.skipped());
        assertEquals(2, i.steps());
        assertEquals(4.0, i.loss(), 0);
        assertEquals(1, i.firstStep());
        assertEquals(32768, i.lossScale(), 0);
        assertEquals(8 * 4 * 2 / 2.0, i.tokensPerSecond(), 1e-9);
        assertEquals(0, i.mfu(), 0, "no peak given");
        IntervalStats all = new IntervalStats(4, 8, 1e9, 1, 0);
        all.add(new Trainer.StepMetrics(3, 50.0, 1e-3, Double.NaN, 0, 1.0, true, 4));
        IntervalStats.Interval none = all.finish();
        assertTrue(Double.isNaN(none.loss()));
        assertTrue(none.toJson().contains("\"loss\": null"), none.toJson());
    }
}
