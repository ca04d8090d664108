package org.sparkatron.model;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.IntBuffer;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MoeKernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.MoeRouting;
import org.sparkatron.model.ParameterSet.TpRole;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.Mapping;
import org.sparkatron.parallel.Mappings;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.Workspace;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * A mixture-of-experts MLP (Mixtral's sparse MoE block, Megatron's MoE layer with the all-to-all token
 * dispatcher), on one rank of a TP x EP grid:
 *
 * <pre>
 *   x [N, C] (gathered under SP) -> router logits = x Wr^T [N, E] -> top-k experts and weights (+ aux, z losses)
 *     -> [capacity drop] -> permute rows by expert -> [EP: counts all-to-all, rows all-to-all, sort by local expert]
 *     -> each local expert: down(silu(gate x) * up x) (grouped GEMMs) -> [EP: unsort, all-to-all back]
 *     -> combine: y[t] = sum_j w[t, j] expert_j(x[t]) (+ shared expert(x)) -> all-reduce / reduce-scatter over TP
 * </pre>
 * Experts are split over the EP group (rank q holds experts {@code [q E/ep, (q+1) E/ep)}) and each expert's
 * columns over the TP group as the dense MLP's are; the router is replicated (it sees the same gathered rows
 * on every TP rank, so its gradient is identical there). Gradients of the combine weights are partial over
 * TP and summed ({@code [N, k]}, small); the router's input gradient is added once, on TP rank 0, before the
 * input's TP reduction.
 *
 * <p>Synchronisation: buffers are sized for the worst case ({@link MoeShape}), so dropless routing needs no
 * host knowledge of the counts except where the all-to-all needs its splits on the host: under EP without
 * padding to capacity, each MoE layer's forward downloads its send and receive counts once (one host
 * synchronisation per MoE layer and micro-batch, as Megatron's dropless all-to-all dispatcher has); the
 * backward and a recomputation reuse them. With {@code moe_pad_expert_input_to_capacity} every split is
 * known in advance and nothing waits. {@link Transformer#hostSyncsPerStep} counts them.
 */
final class MoeMlp implements Mlp {
    private final ModelConfig cfg;
    private final MoeConfig moe;
    private final RankContext ctx;
    private final Device device;
    private final Kernels k;
    private final MoeKernels moeKernels;
    private final TensorParallel tp;
    private final ExpertParallel ep;
    private final MoeStep step;
    private final MoeRouting routing;
    private final Tensor router;   // [E, C]
    private final Tensor dRouter;
    private final Tensor expertBias; // [E] F32 master weights (aux-loss-free balancing), or null
    private final Tensor tally;      // this layer's row of the step's token counts (expert bias), or null
    private final Tensor up;       // [El, 2 Fl, C]: each local expert's gate rows then up rows (this TP rank's)
    private final Tensor dUp;
    private final Tensor down;     // [El, C, Fl]
    private final Tensor dDown;
    private final Tensor sharedUp; // [2 Fsl, C] or null
    private final Tensor dSharedUp;
    private final Tensor sharedDown; // [C, Fsl]
    private final Tensor dSharedDown;
    private final Mapping inputMap;
    private final Mapping outputMap;
    private ByteBuffer countsHost;

    /** What one micro-batch keeps (see the class comment for the shapes); host split sizes for EP. */
    static final class Activations implements Kept {
        final Tensor gathered; // [N, C] the all-gathered input (SP only)
        final Tensor logits;   // [N, E]
        final Tensor experts;  // I32 [N, k] the router's choices
        final Tensor routed;   // I32 [N, k] after the capacity drop (= experts when dropless)
        final Tensor probs;    // [N, k] combine weights (0 where dropped)
        final Tensor rowMap;   // I32 [N, k]
        final Tensor auxGrad;  // [E] (with an aux loss)
        final Tensor counts;   // I32 [E + ep El]: kept per expert, then received per (source, local expert)
        final Tensor offsets;  // I32 [El + 1] where each local expert's rows start
        final Tensor expertIn; // [recvRows, C]
        final Tensor expertUp; // [recvRows, 2 Fl]
        final Tensor expertAct; // [recvRows, Fl]
        final Tensor yBack;    // [sendRows, C] expert outputs back at the tokens' side
        final Tensor sharedUpOut; // [N, 2 Fsl]
        final Tensor sharedAct;   // [N, Fsl]
        int[] sendSplits;      // elements per EP peer (EP with counts on the host)
        int[] recvSplits;
        private final Device device;

        /** All buffers ({@code tensors}), or only the host split sizes (what FULL recomputation keeps). */
        Activations(Device device, BlockActivations.Shape s, boolean tensors) {
            this.device = device;
            MoeShape m = s.moe();
            boolean t = tensors;
            gathered = t && s.sp() ? f32(s.n(), s.c()) : null;
            logits = t ? f32(m.n(), m.e()) : null;
            experts = t ? i32(m.n(), m.k()) : null;
            routed = t && m.capacity() > 0 ? i32(m.n(), m.k()) : experts;
            probs = t ? f32(m.n(), m.k()) : null;
            rowMap = t ? i32(m.n(), m.k()) : null;
            auxGrad = t && m.aux() ? f32(m.e()) : null;
            counts = t ? i32(m.e() + (m.ep() > 1 ? m.ep() * m.el() : 0)) : null;
            offsets = t ? i32(m.el() + 1) : null;
            expertIn = t ? f32(m.recvRows(), m.c()) : null;
            expertUp = t ? f32(m.recvRows(), 2 * m.fl()) : null;
            expertAct = t ? f32(m.recvRows(), m.fl()) : null;
            yBack = t ? f32(m.sendRows(), m.c()) : null;
            sharedUpOut = t && m.sharedFl() > 0 ? f32(m.n(), 2 * m.sharedFl()) : null;
            sharedAct = t && m.sharedFl() > 0 ? f32(m.n(), m.sharedFl()) : null;
        }

        private Tensor f32(int... shape) {
            return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
        }

        private Tensor i32(int... shape) {
            return device.allocate(MemoryKind.ACTIVATIONS, DType.I32, shape);
        }

        @Override
        public void release() {
            for (Tensor x : new Tensor[] {gathered, logits, experts, probs, rowMap, auxGrad, counts, offsets, expertIn, expertUp,
                    expertAct, yBack, sharedUpOut, sharedAct}) {
                device.release(x);
            }
            if (routed != experts) {
                device.release(routed);
            }
        }
    }

    /** Buffers every MoE layer of a rank shares (one layer computes at a time). */
    static final class Scratch implements Kept {
        final Tensor send;      // [sendRows, C] (EP)
        final Tensor recv;      // [recvRows, C] (EP)
        final Tensor expertOut; // [recvRows, C] (EP)
        final Tensor scores;    // [N, E] (aux loss)
        final Tensor combined;  // [N, C] the partial output before the TP reduction
        final Tensor sharedOut; // [N, C] (shared expert)
        final Tensor dCombined; // [N, C]
        final Tensor dYBack;    // [sendRows, C]
        final Tensor dExpertOut; // [recvRows, C] (EP)
        final Tensor dAct;      // [recvRows, Fl]
        final Tensor dUp;       // [recvRows, 2 Fl]
        final Tensor dExpertIn; // [recvRows, C]
        final Tensor dPerm;     // [sendRows, C] (EP)
        final Tensor dIn;       // [N, C]
        final Tensor dprobs;    // [N, k]
        final Tensor dlogits;   // [N, E]
        final Tensor dSharedUp; // [N, 2 Fsl]
        final Tensor dSharedAct; // [N, Fsl]
        final Tensor padCounts; // I32 [ep El], every block full (padded to capacity, EP)
        final Tensor auxExperts; // I32 [N, k] the top-k without the expert bias (the aux loss counts those), or null
        final Tensor auxProbs;   // [N, k] their weights (unused)
        private final Device device;

        Scratch(Device device, MoeShape m) {
            this.device = device;
            boolean ep = m.ep() > 1;
            boolean shared = m.sharedFl() > 0;
            send = ep ? f32(m.sendRows(), m.c()) : null;
            recv = ep ? f32(m.recvRows(), m.c()) : null;
            expertOut = ep ? f32(m.recvRows(), m.c()) : null;
            scores = m.aux() ? f32(m.n(), m.e()) : null;
            combined = f32(m.n(), m.c());
            sharedOut = shared ? f32(m.n(), m.c()) : null;
            dCombined = f32(m.n(), m.c());
            dYBack = f32(m.sendRows(), m.c());
            dExpertOut = ep ? f32(m.recvRows(), m.c()) : null;
            dAct = f32(m.recvRows(), m.fl());
            dUp = f32(m.recvRows(), 2 * m.fl());
            dExpertIn = f32(m.recvRows(), m.c());
            dPerm = ep ? f32(m.sendRows(), m.c()) : null;
            dIn = f32(m.n(), m.c());
            dprobs = f32(m.n(), m.k());
            dlogits = f32(m.n(), m.e());
            dSharedUp = shared ? f32(m.n(), 2 * m.sharedFl()) : null;
            dSharedAct = shared ? f32(m.n(), m.sharedFl()) : null;
            boolean unbiasedAux = m.aux() && m.bias();
            auxExperts = unbiasedAux ? device.allocate(MemoryKind.ACTIVATIONS, DType.I32, m.n(), m.k()) : null;
            auxProbs = unbiasedAux ? f32(m.n(), m.k()) : null;
            if (ep && m.padded()) {
                padCounts = device.allocate(MemoryKind.WORKSPACE, DType.I32, m.ep() * m.el());
                ByteBuffer b = ByteBuffer.allocateDirect(4 * m.ep() * m.el()).order(ByteOrder.nativeOrder());
                for (int i = 0; i < m.ep() * m.el(); i++) {
                    b.putInt(4 * i, m.capacity());
                }
                device.upload(padCounts, b);
            } else {
                padCounts = null;
            }
        }

        private Tensor f32(int... shape) {
            return device.allocate(MemoryKind.ACTIVATIONS, DType.F32, shape);
        }

        @Override
        public void release() {
            for (Tensor x : new Tensor[] {send, recv, expertOut, scores, combined, sharedOut, dCombined, dYBack, dExpertOut, dAct,
                    dUp, dExpertIn, dPerm, dIn, dprobs, dlogits, dSharedUp, dSharedAct, padCounts, auxExperts, auxProbs}) {
                device.release(x);
            }
        }
    }

    /** Elements (all 4 bytes: F32 and I32) of one micro-batch's {@link Activations}: what the memory estimate counts. */
    static long keptElements(MoeShape m, boolean sp) {
        long n = m.n();
        long c = m.c();
        long recv = m.recvRows();
        return (sp ? n * c : 0) + n * m.e() + n * m.k() * (m.capacity() > 0 ? 4 : 3) + (m.aux() ? m.e() : 0)
                + m.e() + (m.ep() > 1 ? (long) m.ep() * m.el() : 0) + m.el() + 1
                + recv * (c + 3L * m.fl()) + (long) m.sendRows() * c + n * 3L * m.sharedFl();
    }

    /** F32 elements of the {@link Scratch} (activations), and its workspace bytes. */
    static long scratchElements(MoeShape m) {
        long n = m.n();
        long c = m.c();
        long send = m.sendRows();
        long recv = m.recvRows();
        boolean ep = m.ep() > 1;
        return (ep ? send * c + 3 * recv * c + send * c : 0) + (m.aux() ? n * m.e() : 0) + 3 * n * c
                + (m.sharedFl() > 0 ? n * c + 3L * n * m.sharedFl() : 0) + send * c + recv * (3L * m.fl() + c)
                + n * m.k() + n * m.e() + (m.aux() && m.bias() ? 2L * n * m.k() : 0);
    }

    static long scratchWorkspaceBytes(MoeShape m) {
        return m.ep() > 1 && m.padded() ? 4L * m.ep() * m.el() : 0;
    }

    MoeMlp(ModelConfig cfg, RankContext ctx, ParameterSet ps, int index, Workspace ws, MoeStep step) {
        String p = "layers." + index + ".";
        this.cfg = cfg;
        this.moe = cfg.moe();
        this.ctx = ctx;
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.moeKernels = k.moe();
        this.tp = ctx.tp();
        this.ep = ctx.expertParallel();
        this.step = step;
        this.routing = new MoeRouting(moe.sigmoid(), moe.normTopK(), moe.topKScale());
        router = ps.weight(p + "moe.router.w");
        dRouter = ps.grad(p + "moe.router.w");
        expertBias = moe.expertBias() ? step.master.weight(p + "moe.router.b") : null;
        tally = moe.expertBias() ? step.tallyOf(cfg, index) : null;
        up = ps.weight(p + "moe.experts.up.w");
        dUp = ps.grad(p + "moe.experts.up.w");
        down = ps.weight(p + "moe.experts.down.w");
        dDown = ps.grad(p + "moe.experts.down.w");
        boolean shared = moe.sharedFfn() > 0;
        sharedUp = shared ? ps.weight(p + "moe.shared.up.w") : null;
        dSharedUp = shared ? ps.grad(p + "moe.shared.up.w") : null;
        sharedDown = shared ? ps.weight(p + "moe.shared.down.w") : null;
        dSharedDown = shared ? ps.grad(p + "moe.shared.down.w") : null;
        inputMap = tp.sequenceParallel() ? new Mappings.GatherFromSequenceRegion(ctx) : new Mappings.CopyToTensorRegion(ctx);
        outputMap = tp.sequenceParallel() ? new Mappings.ReduceScatterToSequenceRegion(ctx) : new Mappings.ReduceFromTensorRegion(ctx);
    }

    /** The layer's dense parameters (router, its expert bias, shared expert), in layout order. */
    static void declare(ParameterSet.Builder bld, ModelConfig cfg, String p, int tpSize) {
        MoeConfig m = cfg.moe();
        bld.add(p + "moe.router.w", TpRole.REPLICATED, m.experts(), cfg.hidden());
        if (m.expertBias()) { // not trained (no gradient, no decay: AdamW leaves it as it is); updated from token counts
            bld.add(p + "moe.router.b", TpRole.REPLICATED, m.experts());
        }
        if (m.sharedFfn() > 0) {
            int fsl = m.sharedFfn() / tpSize;
            bld.add(p + "moe.shared.up.w", TpRole.SPLIT, 2 * fsl, cfg.hidden());
            bld.add(p + "moe.shared.down.w", TpRole.SPLIT, cfg.hidden(), fsl);
        }
    }

    /** The layer's experts on one rank of TP x EP: its El experts' gate|up and down shards (the expert region). */
    static void declareExperts(ParameterSet.Builder bld, ModelConfig cfg, String p, int tpSize, int epSize) {
        MoeConfig m = cfg.moe();
        int el = m.experts() / epSize;
        int fl = m.expertFfn() / tpSize;
        bld.add(p + "moe.experts.up.w", TpRole.SPLIT, el, 2 * fl, cfg.hidden());
        bld.add(p + "moe.experts.down.w", TpRole.SPLIT, el, cfg.hidden(), fl);
    }

    @Override
    public Kept kept(Device d, BlockActivations.Shape s, Recompute mode) {
        return new Activations(d, s, mode != Recompute.FULL);
    }

    @Override
    public boolean isMoe() {
        return true;
    }

    @Override
    public void forward(Kept work, Kept record, Tensor in, BlockActivations.Shape s, TransformerBlock.Scratch sc, Tensor out,
                        boolean recompute) {
        Activations a = (Activations) work;
        Activations rec = (Activations) record;
        MoeShape m = s.moe();
        MoeMlp.Scratch x = sc.moe;
        int n = m.n();
        int c = m.c();
        Tensor xFull = in;
        if (tp.sequenceParallel()) {
            inputMap.forward(in, a.gathered);
            xFull = a.gathered;
        }
        boolean stats = step.training && !recompute;
        // router
        k.linearForward(a.logits, xFull, router, null, n, c, m.e());
        moeKernels.route(a.logits, a.experts, a.probs, m.aux() ? x.scores : null, expertBias, n, m.e(), m.k(), routing);
        if (m.aux()) {
            // Megatron counts the aux loss's assignments by the unbiased top-k (compute_routing_scores_for_aux_loss)
            Tensor auxChoices = a.experts;
            if (expertBias != null) {
                moeKernels.route(a.logits, x.auxExperts, x.auxProbs, null, null, n, m.e(), m.k(), routing);
                auxChoices = x.auxExperts;
            }
            moeKernels.auxLoss(x.scores, auxChoices, a.auxGrad, step.stats, MoeStep.AUX, n, m.e(), m.k(),
                    (float) (moe.auxLossCoeff() * step.gradScale), stats ? step.weight / step.moeLayers : 0);
        }
        if (m.zLoss() && stats) {
            moeKernels.zLoss(a.logits, step.stats, MoeStep.Z, n, m.e(), step.weight / step.moeLayers);
        }
        if (m.capacity() > 0) { // the drop count is a statistic of a training pass's first forward only
            moeKernels.capacity(a.routed, a.probs, a.experts, stats ? step.stats : null, MoeStep.DROPPED, n, m.e(), m.k(),
                    m.capacity(), stats ? step.weight / ((double) step.moeLayers * n * m.k()) : 0);
        }
        // dispatch
        boolean epOn = m.ep() > 1;
        Tensor localCounts = a.counts.slice(0, m.e());
        moeKernels.permute(epOn ? x.send : a.expertIn, a.rowMap, localCounts, epOn ? null : a.offsets, xFull, a.routed, n, c, m.e(),
                m.k(), m.padded() ? m.capacity() : 0);
        if (tally != null && stats) { // the kept assignments per expert (after any capacity drop), as Megatron counts them
            moeKernels.countTokens(tally, localCounts, m.e());
        }
        Tensor recvCounts = null;
        if (epOn) {
            recvCounts = exchangeCounts(a, rec, m, recompute, x);
            ep.group().allToAll(head(x.send, a.sendSplits), a.sendSplits, head(x.recv, a.recvSplits), a.recvSplits);
            moeKernels.sortChunks(a.expertIn, a.offsets, x.recv, recvCounts, m.ep(), m.el(), c, false);
        }
        // the local experts
        int rows = m.recvRows();
        moeKernels.groupedLinearForward(a.expertUp, a.expertIn, up, a.offsets, m.el(), c, 2 * m.fl());
        k.swigluForward(a.expertAct, a.expertUp, rows, m.fl());
        moeKernels.groupedLinearForward(epOn ? x.expertOut : a.yBack, a.expertAct, down, a.offsets, m.el(), m.fl(), c);
        if (epOn) {
            moeKernels.sortChunks(x.recv, null, x.expertOut, recvCounts, m.ep(), m.el(), c, true);
            ep.group().allToAll(head(x.recv, a.recvSplits), a.recvSplits, head(a.yBack, a.sendSplits), a.sendSplits);
        }
        // combine, the shared expert, and the TP reduction
        moeKernels.unpermute(x.combined, a.yBack, a.rowMap, a.probs, n, c, m.k());
        if (m.sharedFl() > 0) {
            k.linearForward(a.sharedUpOut, xFull, sharedUp, null, n, c, 2 * m.sharedFl());
            k.swigluForward(a.sharedAct, a.sharedUpOut, n, m.sharedFl());
            k.linearForward(x.sharedOut, a.sharedAct, sharedDown, null, n, m.sharedFl(), c);
            k.add(x.combined, x.combined, x.sharedOut, (long) n * c);
        }
        outputMap.forward(x.combined, out);
    }

    /**
     * Under EP: the received counts per (source, local expert), on the device; and the all-to-all splits on
     * the host, from one download of the counts (the layer's one synchronisation), from what the first forward
     * recorded (a recomputation), or, padded to capacity, known without looking.
     */
    private Tensor exchangeCounts(Activations a, Activations rec, MoeShape m, boolean recompute, MoeMlp.Scratch x) {
        int[] even = new int[m.ep()];
        java.util.Arrays.fill(even, m.el());
        int per = m.el() * m.c();
        if (m.padded()) {
            int[] splits = new int[m.ep()];
            java.util.Arrays.fill(splits, m.capacity() * per);
            a.sendSplits = splits;
            a.recvSplits = splits;
            return x.padCounts;
        }
        Tensor recv = a.counts.slice(m.e(), m.ep() * m.el());
        ep.group().allToAll(a.counts.slice(0, m.e()), even, recv, even);
        if (recompute) {
            a.sendSplits = rec.sendSplits;
            a.recvSplits = rec.recvSplits;
            return recv;
        }
        if (countsHost == null) {
            countsHost = ByteBuffer.allocateDirect(4 * (m.e() + m.ep() * m.el())).order(ByteOrder.nativeOrder());
        }
        device.download(countsHost, a.counts); // the host synchronisation the all-to-all's splits need
        IntBuffer h = countsHost.asIntBuffer();
        int[] send = new int[m.ep()];
        int[] got = new int[m.ep()];
        for (int q = 0; q < m.ep(); q++) {
            for (int e = 0; e < m.el(); e++) {
                send[q] += h.get(q * m.el() + e) * m.c();
                got[q] += h.get(m.e() + q * m.el() + e) * m.c();
            }
        }
        a.sendSplits = send;
        a.recvSplits = got;
        if (rec != a) {
            rec.sendSplits = send;
            rec.recvSplits = got;
        }
        return recv;
    }

    @Override
    public void backward(Kept kept, Tensor in, Tensor dout, Tensor din, BlockActivations.Shape s, TransformerBlock.Scratch sc) {
        Activations a = (Activations) kept;
        MoeShape m = s.moe();
        MoeMlp.Scratch x = sc.moe;
        int n = m.n();
        int c = m.c();
        boolean epOn = m.ep() > 1;
        Tensor xFull = a.gathered != null ? a.gathered : in;
        Tensor recvCounts = !epOn ? null : m.padded() ? x.padCounts : a.counts.slice(m.e(), m.ep() * m.el());
        outputMap.backward(dout, x.dCombined);
        // combine: gradients of the expert outputs and of the weights (partial over TP: summed)
        moeKernels.unpermuteBackward(x.dYBack, x.dprobs, x.dCombined, a.yBack, a.rowMap, a.probs, m.sendRows(), n, c, m.k());
        if (tp.size() > 1) {
            tp.group().allReduce(x.dprobs, ReduceOp.SUM);
        }
        Tensor dExpertOut = x.dYBack;
        if (epOn) {
            ep.group().allToAll(head(x.dYBack, a.sendSplits), a.sendSplits, head(x.recv, a.recvSplits), a.recvSplits);
            moeKernels.sortChunks(x.dExpertOut, null, x.recv, recvCounts, m.ep(), m.el(), c, false);
            dExpertOut = x.dExpertOut;
        }
        moeKernels.groupedLinearBackward(x.dAct, dDown, dExpertOut, a.expertAct, down, a.offsets, m.el(), m.fl(), c);
        k.swigluBackward(x.dUp, x.dAct, a.expertUp, m.recvRows(), m.fl());
        moeKernels.groupedLinearBackward(x.dExpertIn, dUp, x.dUp, a.expertIn, up, a.offsets, m.el(), c, 2 * m.fl());
        Tensor dPerm = x.dExpertIn;
        if (epOn) {
            moeKernels.sortChunks(x.recv, null, x.dExpertIn, recvCounts, m.ep(), m.el(), c, true);
            ep.group().allToAll(head(x.recv, a.recvSplits), a.recvSplits, head(x.dPerm, a.sendSplits), a.sendSplits);
            dPerm = x.dPerm;
        }
        k.zero(x.dIn);
        moeKernels.permuteBackward(x.dIn, dPerm, a.rowMap, n, c, m.k());
        if (m.sharedFl() > 0) {
            k.linearBackward(x.dSharedAct, false, dSharedDown, null, x.dCombined, a.sharedAct, sharedDown, n, m.sharedFl(), c);
            k.swigluBackward(x.dSharedUp, x.dSharedAct, a.sharedUpOut, n, m.sharedFl());
            k.linearBackward(x.dIn, true, dSharedUp, null, x.dSharedUp, xFull, sharedUp, n, c, 2 * m.sharedFl());
        }
        // the router: identical on every TP rank, so its input gradient joins the reduction from rank 0 only
        float zWeight = m.zLoss() ? (float) (moe.zLossCoeff() * step.gradScale / n) : 0f;
        moeKernels.routeBackward(x.dlogits, x.dprobs, a.logits, a.experts, a.auxGrad, zWeight, n, m.e(), m.k(), routing);
        k.linearBackward(tp.rank() == 0 ? x.dIn : null, true, dRouter, null, x.dlogits, xFull, router, n, c, m.e());
        inputMap.backward(x.dIn, din);
    }

    /** The first elements of {@code t} (a worst-case buffer) that an all-to-all of these splits moves. */
    private static Tensor head(Tensor t, int[] splits) {
        long n = 0;
        for (int x : splits) {
            n += x;
        }
        return t.slice(0, n);
    }

    @Override
    public void close() {
        inputMap.close();
        outputMap.close();
    }
}
