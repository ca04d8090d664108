package org.sparkatron.parallel;

import org.sparkatron.device.Kernels;

import org.sparkatron.tensor.Tensor;

/**
 * Token embedding with the (padded) vocabulary split over the TP group (Megatron's
 * {@code VocabParallelEmbedding}): rank r owns rows {@code [r Vl, (r+1) Vl)} of the table. Each rank looks up
 * the ids in its range and writes zero rows for the others (masked), then the partial rows are summed
 * over the group: all-reduced, or reduce-scattered into row blocks under sequence parallelism. The
 * backward gathers the output gradient to all rows (under SP) and scatter-adds the rows of this rank's
 * ids into its table shard.
 *
 * <p>Also adds learned position embeddings (GPT-2) to a block of rows, after the reduction, so they are
 * added once. Threading and failure: one rank's thread; forward and backward are TP collectives.
 */
public final class VocabParallelEmbedding {
    private final TensorParallel tp;
    private final Kernels kernels;
    private final int vocabLocal;
    private final int vocabStart;
    private final int c;
    private final Tensor w;
    private final Tensor dw;
    private final Workspace ws;
    private final Mapping outputMap;

    /** @param w this rank's table shard [vocabLocal, c]; {@code dw} its gradient */
    public VocabParallelEmbedding(RankContext ctx, int vocabLocal, int c, Tensor w, Tensor dw, Workspace ws) {
        TensorParallel tp = ctx.tp();
        this.tp = tp;
        this.kernels = ctx.kernels();
        this.vocabLocal = vocabLocal;
        this.vocabStart = tp.rank() * vocabLocal;
        this.c = c;
        this.w = w;
        this.dw = dw;
        this.ws = ws;
        this.outputMap = tp.sequenceParallel() ? new Mappings.ReduceScatterToSequenceRegion(ctx)
                : new Mappings.ReduceFromTensorRegion(ctx);
    }

    /** The first vocabulary id this rank owns. */
    public int vocabStart() {
        return vocabStart;
    }

    /** {@code out} [tp.localRows(n), c] = embedding of the n token ids (this rank's row block under SP). */
    public void forward(Tensor tokens, int n, Tensor out) {
        Tensor full = tp.sequenceParallel() ? ws.get("tp.rows", n, c) : out;
        kernels.embeddingForward(full, tokens, w, vocabStart, n, c); // zero rows for ids other ranks own
        outputMap.forward(full, out);
    }

    /** dTable += rows of dOut ([tp.localRows(n), c]) at this rank's ids. */
    public void backward(Tensor dout, Tensor tokens, int n) {
        Tensor full = tp.sequenceParallel() ? ws.get("tp.rows", n, c) : dout;
        outputMap.backward(dout, full);
        kernels.embeddingBackward(dw, full, tokens, vocabStart, n, c);
    }
}
