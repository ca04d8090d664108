package org.sparkatron.parallel;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Recompute;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.SampleSource;
import org.sparkatron.train.Trainer;

/**
 * Runs of the context-parallel parity tests: one rank alone, and a TP x CP x DP x PP world of ranks as threads
 * training on the same global batches of sequences of {@link #SEQ} tokens (16, so CP 4 cuts each sequence into
 * 8 chunks of 2). Each rank reports, per step, its loss, gradient norm and the gathered (full-shape) gradients
 * (none under the distributed optimizer, which reduces only a rank's shard of them) and weights of the parameters
 * its stage holds, by name ({@link PipelineRun.Step}).
 */
final class ContextParallelRun {
    static final int SEQ = 16;
    static final int STEPS = 4;

    /** A layout and what runs on it. */
    record Setup(int tp, int cp, ContextParallel.CommType mode, int dp, int pp, boolean sp, int batch, int micro,
                 Recompute recompute, float dropout, DataParallel.Config inModel, Precision precision) {
        static Setup of(int tp, int cp, String mode, int dp, int pp, boolean sp) {
            return new Setup(tp, cp, ContextParallel.CommType.parse(mode), dp, pp, sp, 2, pp > 1 ? 4 : 1, Recompute.NONE, 0f, null,
                    Precision.FP32);
        }

        Setup with(Recompute r, float drop) {
            return new Setup(tp, cp, mode, dp, pp, sp, batch, micro, r, drop, inModel, precision);
        }

        /** Gradients reduced by the model's own data parallelism over DP x CP ({@code c}), not the trainer's GradientSync. */
        Setup inModel(DataParallel.Config c) {
            return new Setup(tp, cp, mode, dp, pp, sp, batch, micro, recompute, dropout, c, precision);
        }

        /** Every rank, and the reference, in precision {@code p} (FP8: Megatron's default delayed-scaling recipe). */
        Setup in(Precision p) {
            return new Setup(tp, cp, mode, dp, pp, sp, batch, micro, recompute, dropout, inModel, p);
        }

        int world() {
            return tp * cp * dp * pp;
        }
    }

    private ContextParallelRun() {
    }

    /** {@link ParityRun#config} with room for sequences of {@link #SEQ} tokens. */
    static ModelConfig config(String family, int layers) throws Exception {
        return ParityRun.config(family, layers, 2 * SEQ);
    }

    /** The samples replica {@code dp} of {@code dpSize} trains on, {@code batch} per micro-batch, in run order. */
    static SampleSource source(ModelConfig cfg, int dp, int dpSize, int batch) {
        return ParityRun.source(cfg, dp, dpSize, batch, SEQ, 2000);
    }

    /** One rank alone: micro-batches of dp x batch samples (the replicas' together), the same order. */
    static List<PipelineRun.Step> reference(ModelConfig cfg, Setup s) {
        Transformer m = new Transformer(cfg, RankContext.single(TestDevices.create(), s.precision()));
        m.initialize(ParityRun.SEED);
        m.setDropout(s.dropout(), 99);
        Trainer tr = new Trainer(m, source(cfg, 0, 1, s.dp() * s.batch()), PipelineRun.options(s.dp() * s.batch(), s.micro()));
        List<PipelineRun.Step> out = new ArrayList<>();
        for (int i = 0; i < STEPS; i++) {
            Trainer.StepMetrics sm = tr.step();
            out.add(new PipelineRun.Step(sm.loss(), sm.gradNorm(), PipelineRun.byName(m, true), PipelineRun.byName(m, false)));
        }
        return out;
    }

    /** This rank's model: TP, PP and CP groups from the layout, initialised from the seed. */
    static Transformer model(ModelConfig cfg, Setup s, ProcessGroups pg) {
        PipelineParallel stage = new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), s.pp(), 1, -1, -1), pg.embedding());
        RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), s.sp()), s.precision(), stage)
                .withContextParallel(new ContextParallel(pg.cp(), s.mode()));
        if (s.inModel() != null) {
            ctx = ctx.withDataParallel(new DataParallel(pg.dpWithCp(), s.inModel()));
        }
        Transformer m = new Transformer(cfg, ctx);
        m.initialize(ParityRun.SEED);
        return m;
    }

    /** Every world rank's steps. */
    static List<List<PipelineRun.Step>> parallel(ModelConfig cfg, Setup s) throws Exception {
        return parallel(cfg, s, null);
    }

    /** ... and, under FP8, each world rank's recipe state after the last step into {@code fp8States} (by rank). */
    static List<List<PipelineRun.Step>> parallel(ModelConfig cfg, Setup s, Map<Integer, String> fp8States) throws Exception {
        return LocalRanks.run(s.world(), (rank, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(s.world(), s.tp(), s.cp(), 1, s.pp(), 1);
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                Transformer m = model(cfg, s, pg);
                int dpRank = pg.coords()[3];
                m.setDropout(s.dropout(), 99, (long) dpRank * s.batch() * SEQ);
                m.setRecompute(s.recompute());
                Trainer tr = s.inModel() != null
                        ? new Trainer(m, source(cfg, dpRank, s.dp(), s.batch()), PipelineRun.options(s.batch(), s.micro()))
                        : new Trainer(m, source(cfg, dpRank, s.dp(), s.batch()), PipelineRun.options(s.batch(), s.micro()),
                                ParityRun.averaging(pg.dpWithCp()));
                List<PipelineRun.Step> out = new ArrayList<>();
                for (int i = 0; i < STEPS; i++) {
                    Trainer.StepMetrics sm = tr.step();
                    Transformer full = TpCheckpoint.gatherFull(m, true);
                    Map<String, float[]> allG = PipelineRun.byName(full, true);
                    Map<String, float[]> allW = PipelineRun.byName(full, false);
                    Map<String, float[]> g = new LinkedHashMap<>();
                    Map<String, float[]> w = new LinkedHashMap<>();
                    boolean shardedGrads = s.inModel() != null && s.inModel().distributedOptimizer(); // only a shard reduced
                    for (ParameterSet.Param p : m.params().params()) { // this stage's parameters only
                        if (!shardedGrads) {
                            g.put(p.name(), allG.get(p.name()));
                        }
                        w.put(p.name(), allW.get(p.name()));
                    }
                    full.close();
                    out.add(new PipelineRun.Step(sm.loss(), sm.gradNorm(), g, w));
                }
                if (fp8States != null && m.fp8() != null) {
                    synchronized (fp8States) {
                        fp8States.put(rank, m.fp8().saveState());
                    }
                }
                tr.close();
                m.close();
                return out;
            }
        });
    }
}
