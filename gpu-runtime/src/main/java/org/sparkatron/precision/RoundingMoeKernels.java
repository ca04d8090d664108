package org.sparkatron.precision;

import org.sparkatron.device.MoeKernels;
import org.sparkatron.device.MoeRouting;
import org.sparkatron.tensor.Tensor;

/**
 * The mixture-of-experts half of {@link RoundingKernels} (its {@link RoundingKernels#moe()}): the router (logits,
 * scores, weights, losses) stays fp32, as Megatron's {@code moe_router_dtype} fp32 keeps it; dispatched rows are
 * copies of rounded values; combined outputs, expert GEMM outputs and activation gradients are rounded as a 16-bit
 * buffer would hold them, with the rounding kernel of the {@link RoundingKernels} it belongs to (so in that set's
 * stream order).
 *
 * <p>Threading: as the wrapped kernels (one rank's thread); stateless itself.
 */
final class RoundingMoeKernels implements MoeKernels {
    private final MoeKernels k;
    private final RoundingKernels rounding;

    RoundingMoeKernels(MoeKernels delegate, RoundingKernels rounding) {
        this.k = delegate;
        this.rounding = rounding;
    }

    private void round(Tensor t, long count) {
        rounding.round(t, count);
    }

    @Override
    public void route(Tensor logits, Tensor experts, Tensor probs, Tensor scores, Tensor bias, int n, int e, int kk,
                      MoeRouting routing) {
        k.route(logits, experts, probs, scores, bias, n, e, kk, routing);
    }

    @Override
    public void countTokens(Tensor tally, Tensor counts, int e) {
        k.countTokens(tally, counts, e);
    }

    @Override
    public void expertBiasUpdate(Tensor bias, Tensor tally, int e, float rate) {
        k.expertBiasUpdate(bias, tally, e, rate);
    }

    @Override
    public void auxLoss(Tensor scores, Tensor experts, Tensor auxGrad, Tensor acc, int slot, int n, int e, int kk,
                        float gradWeight, double reportWeight) {
        k.auxLoss(scores, experts, auxGrad, acc, slot, n, e, kk, gradWeight, reportWeight);
    }

    @Override
    public void zLoss(Tensor logits, Tensor acc, int slot, int n, int e, double reportWeight) {
        k.zLoss(logits, acc, slot, n, e, reportWeight);
    }

    @Override
    public void capacity(Tensor routed, Tensor probs, Tensor experts, Tensor acc, int slot, int n, int e, int kk, int capacity,
                         double reportWeight) {
        k.capacity(routed, probs, experts, acc, slot, n, e, kk, capacity, reportWeight);
    }

    @Override
    public void permute(Tensor out, Tensor rowMap, Tensor counts, Tensor offsets, Tensor x, Tensor routed, int n, int c, int e,
                        int kk, int capacity) {
        k.permute(out, rowMap, counts, offsets, x, routed, n, c, e, kk, capacity);
    }

    @Override
    public void permuteBackward(Tensor dx, Tensor dperm, Tensor rowMap, int n, int c, int kk) {
        k.permuteBackward(dx, dperm, rowMap, n, c, kk);
        round(dx, (long) n * c);
    }

    @Override
    public void unpermute(Tensor out, Tensor y, Tensor rowMap, Tensor probs, int n, int c, int kk) {
        k.unpermute(out, y, rowMap, probs, n, c, kk);
        round(out, (long) n * c);
    }

    @Override
    public void unpermuteBackward(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rowMap, Tensor probs, int rows,
                                  int n, int c, int kk) {
        round(dout, (long) n * c);
        k.unpermuteBackward(dy, dprobs, dout, y, rowMap, probs, rows, n, c, kk);
        round(dy, (long) rows * c);
    }

    @Override
    public void routeBackward(Tensor dlogits, Tensor dprobs, Tensor logits, Tensor experts, Tensor auxGrad, float zWeight,
                              int n, int e, int kk, MoeRouting routing) {
        k.routeBackward(dlogits, dprobs, logits, experts, auxGrad, zWeight, n, e, kk, routing);
    }

    @Override
    public void sortChunks(Tensor out, Tensor offsets, Tensor in, Tensor counts, int a, int b, int c, boolean inverse) {
        k.sortChunks(out, offsets, in, counts, a, b, c, inverse);
    }

    @Override
    public void groupedLinearForward(Tensor out, Tensor x, Tensor w, Tensor offsets, int groups, int in, int outF) {
        k.groupedLinearForward(out, x, w, offsets, groups, in, outF);
        round(out, out.numel());
    }

    @Override
    public void groupedLinearBackward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets, int groups, int in,
                                      int outF) {
        round(dout, dout.numel());
        k.groupedLinearBackward(dx, dw, dout, x, w, offsets, groups, in, outF);
        round(dx, dx == null ? 0 : dx.numel());
    }
}
