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
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.Trainer;

/**
 * Runs of the pipeline parity tests: one rank alone with {@code m} micro-batches per step, and a
 * TP x PP x DP world of ranks as threads training on the same global batches. Each rank reports, per step,
 * its loss and gradient norm, and the gradients and weights of the parameters its stage holds, gathered
 * over its TP group to their whole (TP = 1) shape, by name.
 */
final class PipelineRun {
    /** What ranks see after each step. Parameters by name: gathered to full shape. */
    record Step(double loss, double gradNorm, Map<String, float[]> grads, Map<String, float[]> weights) {
    }

    /** Options of a run: layout, micro-batches, recomputation, dropout, uneven first/last stages. */
    record Setup(int tp, int pp, int vpp, int dp, boolean sp, int batch, int micro, Recompute recompute, float dropout,
                 int firstLayers, int lastLayers, DataParallel.Config ddp, Precision precision, float clip) {
        static Setup of(int tp, int pp, int vpp, int dp, boolean sp) {
            return new Setup(tp, pp, vpp, dp, sp, 2, 4, Recompute.NONE, 0f, -1, -1, null, Precision.FP32, ParityRun.options(2).gradClip());
        }

        Setup with(Recompute r, float drop) {
            return new Setup(tp, pp, vpp, dp, sp, batch, micro, r, drop, firstLayers, lastLayers, ddp, precision, clip);
        }

        Setup uneven(int first, int last) {
            return new Setup(tp, pp, vpp, dp, sp, batch, micro, recompute, dropout, first, last, ddp, precision, clip);
        }

        /** Data parallelism inside the model (null: the test's all-reduce after the backward). */
        Setup ddp(DataParallel.Config c) {
            return new Setup(tp, pp, vpp, dp, sp, batch, micro, recompute, dropout, firstLayers, lastLayers, c, precision, clip);
        }

        Setup precision(Precision p) {
            return new Setup(tp, pp, vpp, dp, sp, batch, micro, recompute, dropout, firstLayers, lastLayers, ddp, p, clip);
        }

        /** Gradient clipping at {@code c} (0: off). */
        Setup clip(float c) {
            return new Setup(tp, pp, vpp, dp, sp, batch, micro, recompute, dropout, firstLayers, lastLayers, ddp, precision, c);
        }

        Setup batches(int b, int m) {
            return new Setup(tp, pp, vpp, dp, sp, b, m, recompute, dropout, firstLayers, lastLayers, ddp, precision, clip);
        }
    }

    private PipelineRun() {
    }

    static Trainer.Options options(int batch, int micro) {
        return options(batch, micro, ParityRun.options(batch).gradClip());
    }

    static Trainer.Options options(int batch, int micro, float clip) {
        Trainer.Options o = ParityRun.options(batch);
        return new Trainer.Options(batch, micro, o.schedule(), o.beta1(), o.beta2(), o.eps(), o.weightDecay(), clip);
    }

    /** One rank alone: micro-batches of dp x batch samples (the DP replicas' together), same order. */
    static List<Step> reference(ModelConfig cfg, Setup s) {
        Transformer m = new Transformer(cfg, RankContext.single(TestDevices.create(), s.precision()));
        m.initialize(ParityRun.SEED);
        m.setDropout(s.dropout(), 99);
        m.setRecompute(Recompute.NONE);
        Trainer tr = new Trainer(m, ParityRun.source(cfg, 0, 1, s.dp() * s.batch()), options(s.dp() * s.batch(), s.micro(), s.clip()));
        List<Step> out = new ArrayList<>();
        for (int i = 0; i < ParityRun.STEPS; i++) {
            Trainer.StepMetrics sm = tr.step();
            out.add(new Step(sm.loss(), sm.gradNorm(), byName(m, true), byName(m, false)));
        }
        return out;
    }

    /** Every world rank's steps. */
    static List<List<Step>> parallel(ModelConfig cfg, Setup s) throws Exception {
        int world = s.tp() * s.pp() * s.dp();
        return LocalRanks.run(world, (rank, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(world, s.tp(), 1, 1, s.pp(), s.vpp());
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                PipelineParallel stage = new PipelineParallel(pg.pp(),
                        PipelineLayout.of(cfg.layers(), s.pp(), s.vpp(), s.firstLayers(), s.lastLayers()), pg.embedding());
                RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), s.sp()), s.precision(), stage,
                        s.ddp() == null ? null : new DataParallel(pg.dp(), s.ddp()));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                int dpRank = pg.coords()[3];
                m.setDropout(s.dropout(), 99, (long) dpRank * s.batch() * ParityRun.SEQ);
                m.setRecompute(s.recompute());
                Trainer tr = new Trainer(m, ParityRun.source(cfg, dpRank, s.dp(), s.batch()), options(s.batch(), s.micro(), s.clip()),
                        s.ddp() == null ? ParityRun.averaging(pg.dp()) : org.sparkatron.train.GradientSync.NONE);
                boolean shardedGrads = s.ddp() != null && s.ddp().distributedOptimizer();
                List<Step> out = new ArrayList<>();
                for (int i = 0; i < ParityRun.STEPS; i++) {
                    Trainer.StepMetrics sm = tr.step();
                    if (tr.distributedOptimizer() != null) {
                        tr.distributedOptimizer().gatherMasterWeights(); // compare the fp32 master weights
                    }
                    Transformer full = TpCheckpoint.gatherFull(m, !shardedGrads);
                    Map<String, float[]> g = new LinkedHashMap<>();
                    Map<String, float[]> w = new LinkedHashMap<>();
                    Map<String, float[]> allG = shardedGrads ? Map.of() : byName(full, true); // sharded: only a shard is reduced
                    Map<String, float[]> allW = byName(full, false);
                    for (ParameterSet.Param p : m.params().params()) { // this stage's parameters only
                        if (!shardedGrads) {
                            g.put(p.name(), allG.get(p.name()));
                        }
                        w.put(p.name(), allW.get(p.name()));
                    }
                    full.close();
                    out.add(new Step(sm.loss(), sm.gradNorm(), g, w));
                }
                return out;
            }
        });
    }

    /** Every parameter of {@code m} by name (gradients or weights), read through the device. */
    static Map<String, float[]> byName(Transformer m, boolean grads) {
        Map<String, float[]> out = new LinkedHashMap<>();
        for (ParameterSet.Param p : m.params().params()) {
            Tensor t = grads ? m.params().grad(p.name()) : m.params().weight(p.name());
            out.put(p.name(), TestDevices.read(m.device(), t.view(p.numel())));
        }
        return out;
    }
}
