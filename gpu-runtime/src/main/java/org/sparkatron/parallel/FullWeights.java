package org.sparkatron.parallel;

import org.sparkatron.model.ModelLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The whole model's weights in the single-rank layout (TP = 1, PP = 1, EP = 1: what {@code new Transformer(cfg, device)}
 * allocates, in its order) on one rank, gathered from a rank's tensor-parallel shards, expert-parallel experts
 * and pipeline stages:
 * how a distributed job hands its trained model to the driver.
 *
 * <p>Collective: every rank of the TP, EP and pipeline groups calls {@link #gather}; TP shards and EP experts
 * are gathered first (every TP and EP rank takes part), then TP rank 0 of each later stage sends its stage's whole
 * weights to the first stage with a point-to-point send. Blocks until done; a dead peer surfaces as the
 * communicator's error. With tied embeddings the first stage's copy is kept (the last stage's is equal).
 */
public final class FullWeights {
    /** Point-to-point tag of the weights of stage {@code s}; no training traffic is in flight when it runs. */
    private static final int TAG = 0x57_0000;

    private FullWeights() {
    }

    /**
     * @return the whole model's weights on TP rank 0 of the first pipeline stage; null on every other rank
     */
    public static float[] gather(Transformer model) {
        // TpCheckpoint's gathered model has the whole model's layout (PP = 1), filled with this stage's parameters;
        // experts are gathered over EP too, and a model with data parallelism inside has the gradient buffer's
        // layout, so it is gathered as well
        Transformer gathered = model.tensorParallel().size() > 1 || model.expertParallel().size() > 1
                || model.dataParallel() != null ? TpCheckpoint.gatherFull(model, false) : model;
        try {
            if (model.tensorParallel().rank() != 0) {
                return null;
            }
            PipelineParallel pp = model.pipeline();
            ModelConfig cfg = model.config();
            if (pp.size() == 1) {
                return gathered.params().downloadWeights();
            }
            List<ParameterSet.Param> mine = ModelLayout.stageParameters(cfg, 1, pp.layout(), pp.stage());
            float[] values = collect(mine, gathered);
            if (pp.stage() > 0) {
                Device dev = model.device();
                Tensor buf = dev.allocate(MemoryKind.WORKSPACE, DType.F32, (long) values.length);
                try {
                    ByteBuffer host = ByteBuffer.allocateDirect(4 * values.length).order(ByteOrder.nativeOrder());
                    host.asFloatBuffer().put(values);
                    dev.upload(buf, host);
                    pp.group().send(buf, 0, TAG + pp.stage());
                } finally {
                    dev.release(buf);
                }
                return null;
            }
            return assemble(cfg, pp, mine, values, model.device());
        } finally {
            if (gathered != model) {
                gathered.close();
            }
        }
    }

    /** The weights of {@code params} (a stage's TP = 1 layout), in that order, read from {@code from} by name. */
    private static float[] collect(List<ParameterSet.Param> params, Transformer from) {
        float[] all = from.params().downloadWeights();
        ParameterSet.Param last = params.get(params.size() - 1);
        float[] out = new float[Math.toIntExact(last.offset() + last.numel())];
        for (ParameterSet.Param p : params) {
            ParameterSet.Param src = from.params().param(p.name());
            System.arraycopy(all, (int) src.offset(), out, (int) p.offset(), (int) p.numel());
        }
        return out;
    }

    /** On the first stage: receives every later stage's weights and places each parameter by name. */
    private static float[] assemble(ModelConfig cfg, PipelineParallel pp, List<ParameterSet.Param> firstParams, float[] firstValues,
                                    Device dev) {
        List<ParameterSet.Param> whole = ModelLayout.stageParameters(cfg, 1, PipelineLayout.single(cfg.layers()), 0);
        ParameterSet.Param lastParam = whole.get(whole.size() - 1);
        float[] out = new float[Math.toIntExact(lastParam.offset() + lastParam.numel())];
        java.util.Map<String, ParameterSet.Param> target = new java.util.HashMap<>();
        whole.forEach(p -> target.put(p.name(), p));
        java.util.Set<String> filled = new java.util.HashSet<>();
        place(firstParams, firstValues, target, filled, out);
        for (int s = 1; s < pp.size(); s++) {
            List<ParameterSet.Param> ps = ModelLayout.stageParameters(cfg, 1, pp.layout(), s);
            ParameterSet.Param lp = ps.get(ps.size() - 1);
            long n = lp.offset() + lp.numel();
            Tensor buf = dev.allocate(MemoryKind.WORKSPACE, DType.F32, n);
            try {
                pp.group().recv(buf, s, TAG + s);
                ByteBuffer host = ByteBuffer.allocateDirect(Math.toIntExact(4 * n)).order(ByteOrder.nativeOrder());
                dev.download(host, buf);
                float[] values = new float[(int) n];
                host.asFloatBuffer().get(values);
                place(ps, values, target, filled, out);
            } finally {
                dev.release(buf);
            }
        }
        if (filled.size() != whole.size()) {
            java.util.Set<String> missing = new java.util.TreeSet<>(target.keySet());
            missing.removeAll(filled);
            throw new IllegalStateException("pipeline stages did not cover parameters " + missing);
        }
        return out;
    }
    private static void place(List<ParameterSet.Param> ps, float[] values, java.util.Map<String, ParameterSet.Param> target,
                              java.util.Set<String> filled, float[] out) {
        for (ParameterSet.Param p : ps) {
            if (!filled.add(p.name())) {
                continue; // the tied embedding's copy on the last stage
            }
            ParameterSet.Param t = target.get(p.name());
            if (t == null || t.numel() != p.numel()) {
                throw new IllegalStateException("stage parameter " + p.name() + " does not match the whole model's layout");
            }
            System.arraycopy(values, (int) p.offset(), out, (int) t.offset(), (int) p.numel());
        }
    }
}
