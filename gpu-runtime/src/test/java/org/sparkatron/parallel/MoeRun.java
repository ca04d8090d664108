package org.sparkatron.parallel;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.Device;
import org.sparkatron.device.TestDevices;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Recompute;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.Trainer;

/**
 * Runs of the expert-parallel parity tests: a TP x EP x DP x PP world of ranks as threads (EP folds into data
 * parallelism for the dense layers, so the data-parallel replicas are the ep x dp ranks of each TP/PP
 * position), each training on its replica's samples; every rank reports, per step, its loss, gradient norm,
 * MoE figures, and the gradients and weights of its stage's parameters gathered over TP and EP to their
 * whole shape, by name.
 */
final class MoeRun {
    /** What a rank saw after a step. */
    record Step(double loss, double gradNorm, Trainer.MoeMetrics moe, Map<String, float[]> grads, Map<String, float[]> weights) {
    }

    /** A layout: sizes, sequence parallelism, micro-batches and recomputation. */
    record Setup(int tp, int ep, int dp, int pp, boolean sp, int micro, Recompute recompute, boolean oneToken) {
        static Setup of(int tp, int ep, int dp, int pp) {
            return new Setup(tp, ep, dp, pp, false, 1, Recompute.NONE, false);
        }

        Setup withSp() {
            return new Setup(tp, ep, dp, pp, true, micro, recompute, oneToken);
        }

        Setup micro(int m, Recompute r) {
            return new Setup(tp, ep, dp, pp, sp, m, r, oneToken);
        }

        /**
         * Every sample is one token id repeated: all positions then have the same hidden state (attention over
         * equal values returns that value), so every token picks the same experts and the other EP ranks get
         * no tokens at all.
         */
        Setup oneTokenEverywhere() {
            return new Setup(tp, ep, dp, pp, sp, micro, recompute, true);
        }

        /** The same world without expert parallelism: its EP ranks become data-parallel ranks. */
        Setup withoutEp() {
            return new Setup(tp, 1, ep * dp, pp, sp, micro, recompute, oneToken);
        }

        int world() {
            return tp * ep * dp * pp;
        }
    }

    static final int BATCH = 2;
    static final int STEPS = 4;

    private MoeRun() {
    }

    /**
     * A Mixtral-style config (GQA 8/4 heads, width 32) with {@code extra} MoE keys ({@code "key": value, ...},
     * may be empty) over 4 experts, top-2, aux and z losses on.
     */
    static ModelConfig config(int layers, String extra) throws Exception {
        String json = "{\"model_type\":\"mixtral\",\"num_hidden_layers\":" + layers + ",\"hidden_size\":32,\"intermediate_size\":24,"
                + "\"num_attention_heads\":8,\"num_key_value_heads\":4,\"vocab_size\":61,\"max_position_embeddings\":16,"
                + "\"tie_word_embeddings\":false,\"sparkatron_vocab_multiple\":8,\"num_local_experts\":4,\"num_experts_per_tok\":2,"
                + "\"moe_aux_loss_coeff\":0.01,\"moe_z_loss_coeff\":0.001" + (extra.isEmpty() ? "" : "," + extra) + "}";
        return ModelConfig.fromJson(new ObjectMapper().readTree(json));
    }

    /** Samples of token 5 only. */
    static org.sparkatron.train.SampleSource oneToken() {
        return new org.sparkatron.train.SampleSource() {
            private long consumed;

            @Override
            public int sampleLength() {
                return ParityRun.SEQ + 1;
            }

            @Override
            public boolean next(int[] out, int offset) {
                java.util.Arrays.fill(out, offset, offset + ParityRun.SEQ + 1, 5);
                consumed++;
                return true;
            }

            @Override
            public long consumed() {
                return consumed;
            }
        };
    }

    /** A world of ranks as threads: each rank's device and world communicator. */
    interface World {
        /** Runs {@code body} on n ranks; their results in rank order, or the first failure rethrown. */
        <T> List<T> run(int n, RankBody<T> body) throws Exception;
    }

    /** One rank's work. */
    interface RankBody<T> {
        T run(int rank, Device device, Communicator world) throws Exception;
    }

    /** The suite's device ({@link TestDevices}) on every rank, connected by {@link LocalRanks} (TCP and shared memory). */
    static final World LOCAL = new World() {
        @Override
        public <T> List<T> run(int n, RankBody<T> body) throws Exception {
            return LocalRanks.run(n, (rank, comm) -> body.run(rank, TestDevices.create(), comm));
        }
    };

    /** The CPU device on every rank (a reference for other devices), connected as {@link #LOCAL}. */
    static final World LOCAL_CPU = new World() {
        @Override
        public <T> List<T> run(int n, RankBody<T> body) throws Exception {
            return LocalRanks.run(n, (rank, comm) -> body.run(rank, new CpuDevice(), comm));
        }
    };

    /** Every world rank's steps, on {@link #LOCAL} ranks. */
    static List<List<Step>> run(ModelConfig cfg, Setup s) throws Exception {
        return run(cfg, s, LOCAL);
    }

    /** Every world rank's steps, on the ranks of {@code ranks}. */
    static List<List<Step>> run(ModelConfig cfg, Setup s, World ranks) throws Exception {
        int world = s.world();
        return ranks.run(world, (rank, device, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(world, s.tp(), 1, s.ep(), s.pp(), 1);
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                PipelineParallel stage = new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), s.pp(), 1, -1, -1),
                        pg.embedding());
                RankContext ctx = new RankContext(device, new TensorParallel(pg.tp(), s.sp()), Precision.FP32, stage,
                        new ExpertParallel(pg.ep(), pg.expertDp()));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                m.setRecompute(s.recompute());
                int replica = pg.dp().rank(); // the dense data-parallel rank: ep fastest, then dp
                int replicas = pg.dp().size();
                GradientSync sync = new ExpertGradientSync(ParityRun.averaging(pg.dp()), m.params(), pg.expertDp(), replicas,
                        m.kernels());
                Trainer tr = new Trainer(m, s.oneToken() ? oneToken() : ParityRun.source(cfg, replica, replicas, BATCH),
                        PipelineRun.options(BATCH, s.micro()), sync);
                List<Step> out = new ArrayList<>();
                for (int i = 0; i < STEPS; i++) {
                    Trainer.StepMetrics sm = tr.step();
                    Transformer full = TpCheckpoint.gatherFull(m, true);
                    Map<String, float[]> g = new LinkedHashMap<>();
                    Map<String, float[]> w = new LinkedHashMap<>();
                    Map<String, float[]> allG = PipelineRun.byName(full, true);
                    Map<String, float[]> allW = PipelineRun.byName(full, false);
                    for (ParameterSet.Param p : m.params().params()) { // this stage's parameters only
                        g.put(p.name(), allG.get(p.name()));
                        w.put(p.name(), allW.get(p.name()));
                    }
                    full.close();
                    out.add(new Step(sm.loss(), sm.gradNorm(), sm.moe(), g, w));
                }
                tr.close();
                m.close();
                return out;
            }
        });
    }
}
