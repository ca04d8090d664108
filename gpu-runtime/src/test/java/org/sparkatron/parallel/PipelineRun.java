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
                 int firstLayers, int lastLayers) {
        static Setup of(int tp, int pp, int vpp, int dp, boolean sp) {
            return new Setup(tp, pp, vpp, dp, sp, 2, 4, Recompute.NONE, 0f, -1, -1);
        }

        Setup with(Recompute r, float drop) {
            return new Setup(tp, pp, vpp, dp, sp, batch, micro, r, drop, firstLayers, lastLayers);
        }

        Setup uneven(int first, int last) {
            return new Setup(tp, pp, vpp, dp, sp, batch, micro, recompute, dropout, first, last);
        }
    }

    private PipelineRun() {
    }

    static Trainer.Options options(int batch, int micro) {
        Trainer.Options o = ParityRun.options(batch);
        return new Trainer.Options(batch, micro, o.schedule(), o.beta1(), o.beta2(), o.eps(), o.weightDecay(), o.gradClip());
    }

    /** One rank alone: micro-batches of dp x batch samples (the DP replicas' together), same order. */
    static List<Step> reference(ModelConfig cfg, Setup s) {
        Transformer m = new Transformer(cfg, TestDevices.create());
        m.initialize(ParityRun.SEED);
        m.setDropout(s.dropout(), 99);
        m.setRecompute(Recompute.NONE);
        Trainer tr = new Trainer(m, ParityRun.source(cfg, 0, 1, s.dp() * s.batch()), options(s.dp() * s.batch(), s.micro()));
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
                RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), s.sp()), Precision.FP32, stage);
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                int dpRank = pg.coords()[3];
                m.setDropout(s.dropout(), 99, (long) dpRank * s.batch() * ParityRun.SEQ);
                m.setRecompute(s.recompute());
                Trainer tr = new Trainer(m, ParityRun.source(cfg, dpRank, s.dp(), s.batch()), options(s.batch(), s.micro()),
                        ParityRun.averaging(pg.dp()));
                List<Step> out = new ArrayList<>();
                for (int i = 0; i < ParityRun.STEPS; i++) {
                    Trainer.StepMetrics sm = tr.step();
                    Transformer full = TpCheckpoint.gatherFull(m, true);
                    Map<String, float[]> g = new LinkedHashMap<>();
                    Map<String, float[]> w = new LinkedHashMap<>();
                    Map<String, float[]> allG = byName(full, true);
                    Map<String, float[]> allW = byName(full, false);
                    for (ParameterSet.Param p : m.params().params()) { // this stage's parameters only
                        g.put(p.name(), allG.get(p.name()));
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
