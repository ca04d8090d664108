package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.device.TestDevices;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;

/**
 * The tensor-parallel model beyond training parity: the sequence-parallel norm-gradient reduction (the
 * classic bug) observed directly, vocabulary padding, logits gathered from vocab shards, model
 * directories loaded and saved under TP, dropout masks over replicated and split activations, and the
 * refusal of layouts that do not split.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class TensorParallelModelTest {
    private static final int B = 2;

    private static int[] batch(ModelConfig cfg) {
        int[] s = new int[B * (ParityRun.SEQ + 1)];
        for (int i = 0; i < B; i++) {
            System.arraycopy(ParityRun.sample(cfg, i), 0, s, i * (ParityRun.SEQ + 1), ParityRun.SEQ + 1);
        }
        return s;
    }

    private static Transformer single(ModelConfig cfg) {
        Transformer m = new Transformer(cfg, TestDevices.create());
        m.initialize(ParityRun.SEED);
        return m;
    }

    /**
     * Under SP each rank's norm-weight gradient covers only its rows: before {@link Transformer#finishGradients}
     * the ranks' gradients differ and sum to the single-rank gradient; after it every rank holds that sum.
     */
    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void sequenceParallelNormGradientsAreSummedOverTheGroup(String family) throws Exception {
        ModelConfig cfg = ParityRun.config(family);
        Transformer ref = single(cfg);
        ref.forwardBackward(batch(cfg), B, ParityRun.SEQ, 1f);
        float[] want = ParityRun.arr(ref, ref.params().grad("layers.1.norm2.w"));
        List<float[][]> seen = LocalRanks.run(2, (rank, world) -> {
            Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), new TensorParallel(world, true), Precision.FP32));
            m.initialize(ParityRun.SEED);
            m.forwardBackward(batch(cfg), B, ParityRun.SEQ, 1f);
            float[] before = ParityRun.arr(m, m.params().grad("layers.1.norm2.w"));
            m.finishGradients();
            return new float[][] {before, ParityRun.arr(m, m.params().grad("layers.1.norm2.w"))};
        });
        boolean differ = false;
        for (int i = 0; i < want.length; i++) {
            float a = seen.get(0)[0][i];
            float b = seen.get(1)[0][i];
            differ |= Math.abs(a - b) > 1e-6;
            // tolerance: fp32 sums over different row groupings, gradients ~1e-2
            assertEquals(want[i], a + b, 2e-6 + 1e-4 * Math.abs(want[i]), "partial gradients sum to the whole at " + i);
            assertEquals(want[i], seen.get(0)[1][i], 2e-6 + 1e-4 * Math.abs(want[i]), "rank 0 after the reduction at " + i);
            assertEquals(seen.get(0)[1][i], seen.get(1)[1][i], 0f, "ranks agree bitwise after the reduction at " + i);
        }
        assertTrue(differ, "each rank's partial gradient sees only its own rows");
    }

    /** Padded vocabulary rows hold garbage: the loss, logits and real gradients do not change. */
    @Test
    void paddedVocabularyNeverAffectsTheLoss() throws Exception {
        ModelConfig cfg = ParityRun.config("llama"); // untied: embed and head both padded
        Transformer ref = single(cfg);
        double want = ref.forwardBackward(batch(cfg), B, ParityRun.SEQ, 1f);
        float[] wantHeadGrad = ParityRun.arr(ref, ref.params().grad("head"));
        LocalRanks.run(4, (rank, world) -> {
            Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), new TensorParallel(world, false), Precision.FP32));
            m.initialize(ParityRun.SEED);
            int rows = m.params().param("head").shape()[0];
            int c = cfg.hidden();
            for (String name : new String[] {"head", "embed"}) {
                Tensor w = m.params().weight(name);
                float[] v = TestDevices.read(m.device(), w);
                for (int r = 0; r < rows; r++) {
                    if (rank * rows + r >= cfg.vocabSize()) {
                        for (int j = 0; j < c; j++) {
                            v[r * c + j] = 1e3f * (j + 1); // would dominate any softmax
                        }
                    }
                }
                TestDevices.write(m.device(), w, v);
            }
            double got = m.forwardBackward(batch(cfg), B, ParityRun.SEQ, 1f);
            assertEquals(want, got, 1e-5, "loss with garbage in padded rows");
            float[] headGrad = TestDevices.read(m.device(), m.params().grad("head"));
            for (int r = 0; r < rows; r++) {
                int id = rank * rows + r;
                for (int j = 0; j < c; j++) {
                    float g = headGrad[r * c + j];
                    if (id >= cfg.vocabSize()) {
                        assertEquals(0f, g, 0f, "padded id " + id + " gets no gradient");
                    } else {
                        assertEquals(wantHeadGrad[id * c + j], g, 2e-6 + 1e-3 * Math.abs(wantHeadGrad[id * c + j]), "head grad of id " + id);
                    }
                }
            }
            return null;
        });
    }

    /**
     * Vocab 64 with the default padding multiple of 128 pads to 512 rows at TP = 4: ranks 1 to 3 own only
     * padding. Initialising by shards and gathering back gives the single-rank initialisation bitwise.
     */
    @Test
    void ranksOwningOnlyPaddingShardAndGather() throws Exception {
        ModelConfig cfg = ModelConfig.fromJson(new ObjectMapper().readTree("{\"model_type\":\"gpt2\",\"n_layer\":1,"
                + "\"n_embd\":32,\"n_head\":4,\"n_positions\":16,\"vocab_size\":64}"));
        assertEquals(512, cfg.paddedVocab(4));
        float[] want = ParityRun.arr(single(cfg), null);
        List<float[]> got = LocalRanks.run(4, (rank, world) -> {
            Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), new TensorParallel(world, false), Precision.FP32));
            m.initialize(ParityRun.SEED);
            Transformer full = TpCheckpoint.gatherFull(m, false);
            return ParityRun.arr(full, full.params().weights());
        });
        for (float[] g : got) {
            org.junit.jupiter.api.Assertions.assertArrayEquals(want, g);
        }
    }

    /** Logits gathered from the vocab shards, and a model directory loaded at TP = 4 and saved back. */
    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama"})
    void modelDirectoryLoadsIntoShardsAndSavesBack(String family, @TempDir Path tmp) throws Exception {
        ModelConfig cfg = ParityRun.config(family);
        Transformer ref = single(cfg);
        ModelStore.save(ref, tmp.resolve("in"));
        float[] wantLogits = ref.logits(batch(cfg), B, ParityRun.SEQ);
        LocalRanks.run(4, (rank, world) -> {
            Transformer m = TpCheckpoint.load(tmp.resolve("in"), new RankContext(TestDevices.create(), new TensorParallel(world, true), Precision.FP32));
            float[] logits = m.logits(batch(cfg), B, ParityRun.SEQ);
            for (int i = 0; i < wantLogits.length; i++) {
                assertEquals(wantLogits[i], logits[i], 2e-5, "logit " + i); // fp32, summation order only
            }
            TpCheckpoint.save(m, tmp.resolve("out"));
            IllegalArgumentException shard = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                    () -> ModelStore.save(m, tmp.resolve("shard-" + rank)));
            org.junit.jupiter.api.Assertions.assertTrue(shard.getMessage().contains("one of 4 tensor-parallel shards"), shard.getMessage());
            return null;
        });
        Transformer back = ModelStore.load(tmp.resolve("out"), TestDevices.create());
        float[] a = ParityRun.arr(ref, ref.params().weights());
        float[] b = ParityRun.arr(back, back.params().weights());
        for (int i = 0; i < a.length; i++) {
            assertEquals(a[i], b[i], 0f, "saved weights equal the loaded ones bitwise (pure copies) at " + i);
        }
    }

    /**
     * Counter-based dropout: the same element gets the same decision on every rank (replicated
     * activations), different elements independent decisions (split activations), and about p of them drop.
     */
    @Test
    void dropoutMasksAreAFunctionOfTheGlobalElement() {
        DropoutRng a = new DropoutRng(0.25f, 5);
        DropoutRng b = new DropoutRng(0.25f, 5);
        int dropped = 0;
        int sameAsNeighbourBlock = 0;
        int n = 1 << 16;
        for (int i = 0; i < n; i++) {
            assertEquals(a.keep(3, 1, i), b.keep(3, 1, i), "same element, same decision");
            dropped += a.keep(3, 1, i) ? 0 : 1;
            sameAsNeighbourBlock += a.keep(3, 1, i) == a.keep(3, 1, i + n) ? 1 : 0;
        }
        assertEquals(0.25, dropped / (double) n, 0.01, "drop rate (binomial sd 0.0017)");
        // two independent blocks agree with probability 0.25^2 + 0.75^2 = 0.625
        assertEquals(0.625, sameAsNeighbourBlock / (double) n, 0.01, "rows of another rank's shard are independent");
        int otherStep = 0;
        int otherSite = 0;
        for (int i = 0; i < 1024; i++) {
            otherStep += a.keep(3, 1, i) != a.keep(4, 1, i) ? 1 : 0;
            otherSite += a.keep(3, 1, i) != a.keep(3, 2, i) ? 1 : 0;
        }
        // independent masks disagree on 37.5% of elements: about 384 of 1024
        assertTrue(otherStep > 300 && otherSite > 300, "steps and sites change the mask: " + otherStep + ", " + otherSite);
        assertThrows(IllegalArgumentException.class, () -> new DropoutRng(1f, 0));
    }

    @Test
    void layoutsThatDoNotSplitAreRefusedByName() throws Exception {
        ModelConfig llama = ModelConfig.fromJson(new ObjectMapper().readTree("{\"model_type\":\"llama\",\"num_hidden_layers\":1,"
                + "\"hidden_size\":32,\"intermediate_size\":48,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                + "\"vocab_size\":61,\"max_position_embeddings\":16}"));
        List<String> msgs = LocalRanks.run(4, (rank, world) -> {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> new Transformer(llama, new RankContext(TestDevices.create(), new TensorParallel(world, false), Precision.FP32)));
            return e.getMessage();
        });
        assertTrue(msgs.get(0).contains("key/value heads 2 fewer than tensor parallel size 4"), msgs.get(0));
        List<String> sp = LocalRanks.run(2, (rank, world) -> {
            Transformer m = new Transformer(ParityRun.config("gpt2"), new RankContext(TestDevices.create(), new TensorParallel(world, true), Precision.FP32));
            int[] odd = new int[3 * 4];
            return assertThrows(IllegalArgumentException.class, () -> m.forwardBackward(odd, 3, 3, 1f)).getMessage();
        });
        assertTrue(sp.get(0).contains("(batch x sequence length = 9) divisible by the tensor-parallel size 2"), sp.get(0));
        assertThrows(IllegalArgumentException.class, () -> new TensorParallel(null, false));
        assertEquals(1, new TensorParallel(new SelfCommunicator(), true).size());
        assertTrue(!new TensorParallel(new SelfCommunicator(), true).sequenceParallel(), "SP over one rank is plain TP = 1");
        for (ParameterSet.Param p : new Transformer(ParityRun.config("gpt2"), TestDevices.create()).params().params()) {
            assertTrue(p.tp() != null, p.name());
        }
    }
}
