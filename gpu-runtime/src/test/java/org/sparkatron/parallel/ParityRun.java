package org.sparkatron.parallel;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.List;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.SampleSource;
import org.sparkatron.train.Trainer;

/** Shared pieces of the parity tests: tiny configs, data, a reference run and a TP x DP run. */
final class ParityRun {
    static final int STEPS = 5;
    static final int SEQ = 8;
    static final long SEED = 7;

    /** What a run saw after each step: loss, gradient norm, full (gathered) gradients and weights. */
    record Step(double loss, double gradNorm, float[] grads, float[] weights) {
    }

    private ParityRun() {
    }

    /**
     * GPT-2 (tied embeddings, biases, learned positions) and Llama (GQA 8 query / 4 kv heads, untied,
     * SwiGLU). Vocabulary padding multiple 8, so vocab 67 pads to 72 at TP = 1, 80 at TP = 2 and 96 at
     * TP = 4: the last TP = 4 rank owns no real token at all, and others own a mix of real and padded ids.
     */
    static ModelConfig config(String family) throws Exception {
        return config(family, 2);
    }

    /** {@link #config(String)} with {@code layers} layers (pipeline tests need at least one per stage). */
    static ModelConfig config(String family, int layers) throws Exception {
        return config(family, layers, 16);
    }

    /** {@link #config(String, int)} with room for {@code positions} positions. */
    static ModelConfig config(String family, int layers, int positions) throws Exception {
        String json = family.equals("gpt2")
                ? "{\"model_type\":\"gpt2\",\"n_layer\":" + layers + ",\"n_embd\":32,\"n_head\":4,\"n_positions\":" + positions
                        + ",\"vocab_size\":67,\"sparkatron_vocab_multiple\":8}"
                : "{\"model_type\":\"llama\",\"num_hidden_layers\":" + layers + ",\"hidden_size\":32,\"intermediate_size\":48,"
                        + "\"num_attention_heads\":8,\"num_key_value_heads\":4,\"vocab_size\":61,\"max_position_embeddings\":" + positions
                        + ",\"tie_word_embeddings\":false,\"sparkatron_vocab_multiple\":8}";
        return ModelConfig.fromJson(new ObjectMapper().readTree(json));
    }

    /** Deterministic samples of SEQ + 1 tokens; sample i of the whole run. */
    static int[] sample(ModelConfig cfg, long i) {
        return sample(cfg, i, SEQ, 1000);
    }

    /** Sample {@code i} of {@code seq + 1} tokens, drawn from a generator seeded {@code seedBase + i}. */
    static int[] sample(ModelConfig cfg, long i, int seq, long seedBase) {
        int[] s = new int[seq + 1];
        java.util.SplittableRandom r = new java.util.SplittableRandom(seedBase + i);
        for (int j = 0; j < s.length; j++) {
            s[j] = r.nextInt(cfg.vocabSize());
        }
        return s;
    }

    /** The samples replica {@code dp} of {@code dpSize} trains on, {@code batch} per step. */
    static SampleSource source(ModelConfig cfg, int dp, int dpSize, int batch) {
        return source(cfg, dp, dpSize, batch, SEQ, 1000);
    }

    /** {@link #source(ModelConfig, int, int, int)} of {@link #sample(ModelConfig, long, int, long)}'s samples. */
    static SampleSource source(ModelConfig cfg, int dp, int dpSize, int batch, int seq, long seedBase) {
        return new SampleSource() {
            private long consumed;

            @Override
            public int sampleLength() {
                return seq + 1;
            }

            @Override
            public boolean next(int[] out, int offset) {
                long step = consumed / batch;
                long i = step * batch * dpSize + (long) dp * batch + consumed % batch;
                System.arraycopy(sample(cfg, i, seq, seedBase), 0, out, offset, seq + 1);
                consumed++;
                return true;
            }

            @Override
            public long consumed() {
                return consumed;
            }
        };
    }

    /**
     * Constant lr 1e-2, AdamW defaults, clip at 0.05 so that clipping is active on every step (the norm is
     * then part of every update, and a miscounted norm would change every weight).
     */
    static Trainer.Options options(int batch) {
        Trainer.Options d = Trainer.Options.defaults(batch, LrSchedule.constant(1e-2));
        return new Trainer.Options(batch, 1, d.schedule(), d.beta1(), d.beta2(), d.eps(), d.weightDecay(), 0.05f);
    }

    /** A tensor of {@code m}'s device as an array (through the device's copies); null: all of m's weights. */
    static float[] arr(Transformer m, Tensor t) {
        return TestDevices.read(m.device(), t == null ? m.params().weights() : t);
    }

    /** One rank alone, global batch dpSize * batch. */
    static List<Step> reference(ModelConfig cfg, int globalBatch, float dropout) {
        Transformer m = new Transformer(cfg, TestDevices.create());
        m.initialize(SEED);
        m.setDropout(dropout, 99);
        Trainer tr = new Trainer(m, source(cfg, 0, 1, globalBatch), options(globalBatch));
        List<Step> out = new ArrayList<>();
        for (int s = 0; s < STEPS; s++) {
            Trainer.StepMetrics sm = tr.step();
            out.add(new Step(sm.loss(), sm.gradNorm(), arr(m, m.params().grads()), arr(m, m.params().weights())));
        }
        return out;
    }

    /** Averages gradients and losses over the data-parallel group (the test's DP sync). */
    static GradientSync averaging(Communicator dp) {
        return new GradientSync() {
            @Override
            public void syncGradients(Tensor grads) {
                if (dp.size() > 1) {
                    dp.allReduce(grads, ReduceOp.AVG);
                }
            }

            @Override
            public void averageScalars(Tensor scalars) {
                if (dp.size() > 1) {
                    dp.allReduce(scalars, ReduceOp.AVG);
                }
            }

            @Override
            public void sumScalars(Tensor scalars) {
                if (dp.size() > 1) {
                    dp.allReduce(scalars, ReduceOp.SUM);
                }
            }

            @Override
            public void maxOverReplicas(Tensor amaxes) {
                if (dp.size() > 1) {
                    dp.allReduce(amaxes, ReduceOp.MAX);
                }
            }
        };
    }

    /** Every world rank's steps for a tp x dp run with {@code batch} samples per replica. */
    static List<List<Step>> parallel(ModelConfig cfg, int tp, int dp, boolean sp, int batch, float dropout) throws Exception {
        return LocalRanks.run(tp * dp, (rank, world) -> {
            ParallelLayout layout = ParallelLayout.forWorld(tp * dp, tp, 1, 1, 1, 1);
            try (ProcessGroups pg = ProcessGroups.create(layout, world)) {
                TensorParallel tpc = new TensorParallel(pg.tp(), sp);
                Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), tpc, Precision.FP32));
                m.initialize(SEED); // each rank keeps its shard of the full initialisation
                int dpRank = pg.coords()[3];
                m.setDropout(dropout, 99, (long) dpRank * batch * SEQ);
                Trainer tr = new Trainer(m, source(cfg, dpRank, dp, batch), options(batch), averaging(pg.dp()));
                List<Step> out = new ArrayList<>();
                for (int s = 0; s < STEPS; s++) {
                    Trainer.StepMetrics sm = tr.step();
                    Transformer full = TpCheckpoint.gatherFull(m, true);
                    out.add(new Step(sm.loss(), sm.gradNorm(), arr(full, full.params().grads()), arr(full, full.params().weights())));
                    full.close();
                }
                return out;
            }
        });
    }
}
