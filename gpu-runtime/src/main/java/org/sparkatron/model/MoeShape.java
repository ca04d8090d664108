package org.sparkatron.model;

/**
 * The sizes one MoE layer works with on one rank for one micro-batch: {@code n} token rows (all of the
 * batch's tokens: the router sees the sequence-parallel rows gathered), {@code c} width, {@code e} experts,
 * {@code el} of them on this rank ({@code e / ep}), top-{@code k}, {@code fl} each expert's columns on this
 * TP rank, {@code sharedFl} the shared expert's (0: none), the per-expert {@code capacity} (0: dropless) and
 * whether blocks are padded to it; {@code sendRows}, the most token-side dispatch rows (every assignment kept,
 * or every expert full), and {@code recvRows}, the most expert-side rows this rank can receive under expert
 * parallelism (each of the ep sources sends at most {@code n * min(k, el)} assignments, or {@code el}
 * full experts); {@code bias}: an aux-loss-free expert bias chooses the experts. Worst-case sizes: the buffers never depend on the routing, so nothing waits for the device
 * to size them.
 */
record MoeShape(int n, int c, int e, int el, int ep, int k, int fl, int sharedFl, int capacity, boolean padded,
                int sendRows, int recvRows, boolean aux, boolean zLoss, boolean bias) {

    static MoeShape of(ModelConfig cfg, int tp, int ep, int n) {
        MoeConfig m = cfg.moe();
        int e = m.experts();
        int el = e / ep;
        int k = m.topK();
        int cap = m.dropsTokens() ? m.capacity(n) : 0;
        long all = (long) n * k;
        long send = m.padToCapacity() ? (long) e * cap : cap > 0 ? Math.min(all, (long) e * cap) : all;
        long perSource = m.padToCapacity() ? (long) el * cap
                : Math.min((long) n * Math.min(k, el), cap > 0 ? (long) el * cap : Long.MAX_VALUE);
        long recv = ep == 1 ? send : ep * perSource;
        return new MoeShape(n, cfg.hidden(), e, el, ep, k, m.expertFfn() / tp, m.sharedFfn() / tp, cap, m.padToCapacity(),
                Math.toIntExact(send), Math.toIntExact(recv), m.auxLossCoeff() > 0, m.zLossCoeff() > 0, m.expertBias());
    }

    /** Whether token counts must come to the host to size the all-to-all (dropless or unpadded, under EP). */
    boolean syncsForCounts() {
        return ep > 1 && !padded;
    }
}
