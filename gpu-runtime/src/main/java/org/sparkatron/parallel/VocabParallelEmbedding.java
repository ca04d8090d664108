package org.sparkatron.parallel;

import java.nio.FloatBuffer;
import java.nio.IntBuffer;
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
    private final int vocabLocal;
    private final int vocabStart;
    private final int c;
    private final Tensor w;
    private final Tensor dw;
    private final Workspace ws;
    private final Mapping outputMap;

    /** @param w this rank's table shard [vocabLocal, c]; {@code dw} its gradient */
    public VocabParallelEmbedding(TensorParallel tp, int vocabLocal, int c, Tensor w, Tensor dw, Workspace ws) {
        this.tp = tp;
        this.vocabLocal = vocabLocal;
        this.vocabStart = tp.rank() * vocabLocal;
        this.c = c;
        this.w = w;
        this.dw = dw;
        this.ws = ws;
        this.outputMap = tp.sequenceParallel() ? new Mappings.ReduceScatterToSequenceRegion(tp)
                : new Mappings.ReduceFromTensorRegion(tp);
    }

    /** The first vocabulary id this rank owns. */
    public int vocabStart() {
        return vocabStart;
    }

    /** {@code out} [tp.localRows(n), c] = embedding of the n token ids (this rank's row block under SP). */
    public void forward(Tensor tokens, int n, Tensor out) {
        Tensor full = tp.sequenceParallel() ? ws.get("tp.rows", n, c) : out;
        FloatBuffer o = full.floats();
        FloatBuffer e = w.floats();
        IntBuffer tok = tokens.ints();
        float[] zeros = new float[c];
        for (int r = 0; r < n; r++) {
            int id = tok.get(r) - vocabStart;
            if (id >= 0 && id < vocabLocal) {
                o.put(r * c, e, id * c, c);
            } else {
                o.put(r * c, zeros); // masked: another rank owns this id
            }
        }
        outputMap.forward(full, out);
    }

    /** dTable += rows of dOut ([tp.localRows(n), c]) at this rank's ids. */
    public void backward(Tensor dout, Tensor tokens, int n) {
        Tensor full = tp.sequenceParallel() ? ws.get("tp.rows", n, c) : dout;
        outputMap.backward(dout, full);
        FloatBuffer d = full.floats();
        FloatBuffer g = dw.floats();
        IntBuffer tok = tokens.ints();
        for (int r = 0; r < n; r++) {
            int id = tok.get(r) - vocabStart;
            if (id < 0 || id >= vocabLocal) {
                continue;
            }
            int gb = id * c;
            int db = r * c;
            for (int j = 0; j < c; j++) {
                g.put(gb + j, g.get(gb + j) + d.get(db + j));
            }
        }
    }

    /** {@code x[i] += wpe[(firstRow + i) % t]} for the {@code rows} rows of a block starting at global row firstRow. */
    public static void addPositions(Tensor x, Tensor wpe, int firstRow, int rows, int t, int c) {
        FloatBuffer o = x.floats();
        FloatBuffer p = wpe.floats();
        for (int i = 0; i < rows; i++) {
            int ob = i * c;
            int pb = ((firstRow + i) % t) * c;
            for (int j = 0; j < c; j++) {
                o.put(ob + j, o.get(ob + j) + p.get(pb + j));
            }
        }
    }

    /** {@code dwpe[(firstRow + i) % t] += dx[i]}: the backward of {@link #addPositions}. */
    public static void positionsBackward(Tensor dwpe, Tensor dx, int firstRow, int rows, int t, int c) {
        FloatBuffer d = dx.floats();
        FloatBuffer g = dwpe.floats();
        for (int i = 0; i < rows; i++) {
            int db = i * c;
            int gb = ((firstRow + i) % t) * c;
            for (int j = 0; j < c; j++) {
                g.put(gb + j, g.get(gb + j) + d.get(db + j));
            }
        }
    }
}
