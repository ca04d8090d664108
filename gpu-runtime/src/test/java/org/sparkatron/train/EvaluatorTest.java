package org.sparkatron.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.tensor.Tensor;

/**
 * Evaluation is the mean forward loss of the validation batches, continues through the samples from one
 * evaluation to the next, and gives the same figure on two data-parallel ranks as on one rank that scores
 * the combined batches (the same tokens in batches of another size: float GEMMs block differently, 1e-6 relative).
 */
class EvaluatorTest {
    private static final int T = 8;

    private static Transformer model() throws Exception {
        ModelConfig c = ModelConfig.fromJson(new ObjectMapper().readTree(
                "{\"model_type\":\"gpt2\",\"n_layer\":1,\"n_embd\":16,\"n_head\":2,\"n_positions\":16,\"vocab_size\":32}"));
        Transformer t = new Transformer(c, TestDevices.create());
        t.initialize(3);
        return t;
    }

    private static List<int[]> samples(int n) {
        SplittableRandom rng = new SplittableRandom(5);
        List<int[]> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            out.add(rng.ints(T + 1, 0, 32).toArray());
        }
        return out;
    }

    /** Samples in list order; replica r of dp takes the r-th {@code per} samples of each group of dp x per. */
    private static SampleSource source(List<int[]> all, int replica, int dp, int per) {
        List<int[]> mine = new ArrayList<>();
        for (int i = 0; i < all.size(); i++) {
            if ((i / per) % dp == replica) {
                mine.add(all.get(i));
            }
        }
        return new SampleSource() {
            int at;

            @Override
            public int sampleLength() {
                return T + 1;
            }

            @Override
            public boolean next(int[] out, int offset) {
                if (at >= mine.size()) {
                    return false;
                }
                System.arraycopy(mine.get(at++), 0, out, offset, T + 1);
                return true;
            }

            @Override
            public long consumed() {
                return at;
            }
        };
    }

    @Test
    void meanForwardLossContinuingThroughTheSamples() throws Exception {
        Transformer m = model();
        List<int[]> all = samples(16);
        m.loss(new int[2 * (T + 1)], 2, T, null); // the model's buffers for micro-batches of 2
        long held = m.device().memory().requested(org.sparkatron.device.MemoryKind.WORKSPACE);
        Evaluator e = new Evaluator(m, source(all, 0, 1, 2), 2, 2, 1, GradientSync.NONE);
        Evaluator.Evaluation first = e.run(10, 2); // samples 0..7
        Evaluator.Evaluation second = e.run(20, 2); // samples 8..15
        assertEquals(held, m.device().memory().requested(org.sparkatron.device.MemoryKind.WORKSPACE),
                "evaluations leave no device memory behind (the training step's memory report stays exact)");
        for (int k = 0; k < 2; k++) {
            double sum = 0;
            for (int b = 0; b < 4; b++) {
                int[] batch = new int[2 * (T + 1)];
                System.arraycopy(all.get(8 * k + 2 * b), 0, batch, 0, T + 1);
                System.arraycopy(all.get(8 * k + 2 * b + 1), 0, batch, T + 1, T + 1);
                sum += m.loss(batch, 2, T, null);
            }
            assertEquals(sum / 4, (k == 0 ? first : second).loss(), 1e-12);
        }
        assertEquals(8, first.samples());
        assertEquals(20, second.step());
        assertEquals(Math.exp(second.loss()), second.perplexity(), 1e-12);
        assertThrows(IllegalStateException.class, () -> e.run(30, 1), "the validation samples are used up");
    }

    @Test
    void twoReplicasScoreLikeOneRankOnTheCombinedBatches() throws Exception {
        List<int[]> all = samples(24);
        double one = new Evaluator(model(), source(all, 0, 1, 4), 4, 1, 1, GradientSync.NONE).run(1, 6).loss();
        List<Double> two = LocalRanks.run(2, (rank, world) -> new Evaluator(model(), source(all, rank, 2, 2), 2, 1, 2,
                scalarMean(world)).run(1, 6).loss());
        assertEquals(two.get(0), two.get(1), 0, "every rank reports the same figure");
        assertEquals(one, two.get(0), 1e-6 * one);
    }

    /** The mean over the ranks of a device scalar, as data parallelism averages the loss. */
    private static GradientSync scalarMean(Communicator world) {
        return new GradientSync() {
            @Override
            public void syncGradients(Tensor grads) {
                throw new UnsupportedOperationException("evaluation computes no gradients");
            }

            @Override
            public void averageScalars(Tensor scalars) {
                world.allReduce(scalars, ReduceOp.AVG);
            }
        };
    }
}
