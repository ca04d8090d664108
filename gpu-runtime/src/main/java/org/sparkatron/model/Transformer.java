package org.sparkatron.model;

import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.sparkatron.device.Kernels;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * A decoder-only language model (GPT-2 or Llama family) on one rank: embedding, {@code L} blocks, final
 * norm, output projection and cross-entropy, each with an explicit backward.
 *
 * <p>Memory: parameters and gradients are one block each ({@link ParameterSet}); activations are
 * allocated per batch shape and reused across steps. The output layer and loss run in row chunks so the
 * full {@code [B*T, V]} logits never exist at once during training. Not thread-safe: one rank, one thread.
 */
public final class Transformer {
    /**
     * Rows of logits computed at once: bounds the logits buffer to 256 MB. Larger chunks matter: the
     * output layer's weight gradient is one GEMM per chunk with the chunk's rows as its inner dimension,
     * and short inner dimensions run that GEMM at a fraction of peak.
     */
    private static final long LOGITS_CHUNK_FLOATS = 64L << 20;

    private final ModelConfig cfg;
    private final Kernels k;
    private final ParameterSet params;
    private final List<TransformerBlock> blocks = new ArrayList<>();
    private final Tensor ropeCos; // [maxPos, hd/2] (Llama only)
    private final Tensor ropeSin;
    private final String headName;

    private int b;
    private int t;
    private Tensor inputs;    // [N] I32
    private Tensor targets;   // [N] I32
    private Tensor embedded;  // [N, C]
    private Tensor normF;     // [N, C]
    private Tensor meanF;     // [N]
    private Tensor rstdF;     // [N]
    private Tensor losses;    // [N]
    private Tensor logits;    // [chunk, Vp]
    private Tensor dresid;    // [N, C]
    private Tensor dnormF;    // [N, C]
    private TransformerBlock.BackwardScratch scratch;

    public Transformer(ModelConfig cfg, Kernels kernels) {
        this.cfg = cfg;
        this.k = kernels;
        this.params = declare(cfg);
        this.headName = cfg.tiedEmbeddings() ? "embed" : "head";
        if (cfg.family().usesRope()) {
            int half = cfg.headDim() / 2;
            ropeCos = Tensor.allocateHost(DType.F32, cfg.maxPositions(), half);
            ropeSin = Tensor.allocateHost(DType.F32, cfg.maxPositions(), half);
            FloatBuffer cs = ropeCos.floats();
            FloatBuffer sn = ropeSin.floats();
            for (int pos = 0; pos < cfg.maxPositions(); pos++) {
                for (int j = 0; j < half; j++) {
                    double angle = pos * Math.pow(cfg.ropeTheta(), -2.0 * j / cfg.headDim());
                    cs.put(pos * half + j, (float) Math.cos(angle));
                    sn.put(pos * half + j, (float) Math.sin(angle));
                }
            }
        } else {
            ropeCos = null;
            ropeSin = null;
        }
        for (int i = 0; i < cfg.layers(); i++) {
            blocks.add(new TransformerBlock(cfg, kernels, params, i, ropeCos, ropeSin));
        }
    }

    /** The parameter layout: embeddings, blocks in order, final norm, untied head. */
    static ParameterSet declare(ModelConfig cfg) {
        ParameterSet.Builder bld = ParameterSet.builder();
        bld.add("embed", cfg.paddedVocab(), cfg.hidden());
        if (cfg.family() == ModelConfig.Family.GPT2) {
            bld.add("pos", cfg.maxPositions(), cfg.hidden());
        }
        for (int i = 0; i < cfg.layers(); i++) {
            TransformerBlock.declare(bld, cfg, i);
        }
        bld.add("norm_f.w", cfg.hidden());
        if (cfg.family().hasBiases()) {
            bld.add("norm_f.b", cfg.hidden());
        }
        if (!cfg.tiedEmbeddings()) {
            bld.add("head", cfg.paddedVocab(), cfg.hidden());
        }
        return bld.build();
    }

    public ModelConfig config() {
        return cfg;
    }

    public ParameterSet params() {
        return params;
    }

    /** The kernels this model runs on (one rank's). */
    public Kernels kernels() {
        return k;
    }

    /**
     * GPT-2-style initialisation, deterministic in {@code seed}: weights N(0, 0.02), the two residual output
     * projections N(0, 0.02 / sqrt(2 L)), biases 0, norm weights 1, padded vocabulary rows 0.
     */
    public void initialize(long seed) {
        SplittableRandom rng = new SplittableRandom(seed);
        FloatBuffer w = params.weights().floats();
        double residualStd = 0.02 / Math.sqrt(2.0 * cfg.layers());
        for (ParameterSet.Param p : params.params()) {
            String n = p.name();
            boolean norm = n.contains("norm");
            boolean bias = n.endsWith(".b");
            double std = n.endsWith("attn.out.w") || n.endsWith("mlp.down.w") ? residualStd : 0.02;
            long rows = p.shape()[0];
            long rowLen = p.numel() / Math.max(1, rows);
            for (long i = 0; i < p.numel(); i++) {
                float v;
                if (norm) {
                    v = bias ? 0f : 1f;
                } else if (bias) {
                    v = 0f;
                } else if ((n.equals("embed") || n.equals("head")) && i / rowLen >= cfg.vocabSize()) {
                    v = 0f;
                } else {
                    v = (float) (rng.nextGaussian() * std);
                }
                w.put((int) (p.offset() + i), v);
            }
        }
    }

    private void allocate(int b, int t) {
        if (t > cfg.maxPositions()) {
            throw new IllegalArgumentException("sequence length " + t + " exceeds the model's " + cfg.maxPositions() + " positions");
        }
        if (this.b == b && this.t == t) {
            return;
        }
        this.b = b;
        this.t = t;
        int n = b * t;
        int c = cfg.hidden();
        inputs = Tensor.allocateHost(DType.I32, n);
        targets = Tensor.allocateHost(DType.I32, n);
        embedded = Tensor.allocateHost(DType.F32, n, c);
        normF = Tensor.allocateHost(DType.F32, n, c);
        meanF = Tensor.allocateHost(DType.F32, n);
        rstdF = Tensor.allocateHost(DType.F32, n);
        losses = Tensor.allocateHost(DType.F32, n);
        logits = Tensor.allocateHost(DType.F32, chunkRows(), cfg.paddedVocab());
        dresid = Tensor.allocateHost(DType.F32, n, c);
        dnormF = Tensor.allocateHost(DType.F32, n, c);
        scratch = new TransformerBlock.BackwardScratch(cfg, n);
        for (TransformerBlock blk : blocks) {
            blk.allocate(b, t);
        }
    }

    private int chunkRows() {
        return (int) Math.max(1, Math.min((long) b * t, LOGITS_CHUNK_FLOATS / cfg.paddedVocab()));
    }

    /**
     * Loads a batch of {@code b} samples of {@code t + 1} tokens each (row-major in {@code samples}):
     * inputs are tokens [0, t), targets tokens [1, t + 1). Ids outside the vocabulary are refused.
     */
    private void loadBatch(int[] samples, int b, int t) {
        if (samples.length < b * (t + 1)) {
            throw new IllegalArgumentException("batch needs " + b * (t + 1) + " tokens, got " + samples.length);
        }
        allocate(b, t);
        IntBuffer in = inputs.ints();
        IntBuffer tg = targets.ints();
        for (int s = 0; s < b; s++) {
            for (int i = 0; i <= t; i++) {
                int id = samples[s * (t + 1) + i];
                if (id < 0 || id >= cfg.vocabSize()) {
                    throw new IllegalArgumentException("token id " + id + " (sample " + s + ", position " + i
                            + ") is outside the vocabulary of " + cfg.vocabSize());
                }
                if (i < t) {
                    in.put(s * t + i, id);
                }
                if (i > 0) {
                    tg.put(s * t + i - 1, id);
                }
            }
        }
    }

    private Tensor forwardBlocks() {
        int n = b * t;
        k.embeddingForward(embedded, inputs, params.weight("embed"),
                cfg.family() == ModelConfig.Family.GPT2 ? params.weight("pos") : null, n, t, cfg.hidden());
        Tensor x = embedded;
        for (TransformerBlock blk : blocks) {
            blk.forward(x);
            x = blk.output();
        }
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormForward(normF, rstdF, x, params.weight("norm_f.w"), n, cfg.hidden(), cfg.normEps());
        } else {
            k.layerNormForward(normF, meanF, rstdF, x, params.weight("norm_f.w"), params.weight("norm_f.b"), n,
                    cfg.hidden(), cfg.normEps());
        }
        return x;
    }

    /**
     * One forward and backward pass over a batch; gradients are ADDED to {@code params().grads()} scaled
     * by {@code gradScale} (1 for a single micro-batch; 1/m for m accumulated micro-batches).
     *
     * @return the mean cross-entropy of the batch in nats
     */
    public double forwardBackward(int[] samples, int b, int t, float gradScale) {
        loadBatch(samples, b, t);
        Tensor last = forwardBlocks();
        int n = b * t;
        int c = cfg.hidden();
        int vp = cfg.paddedVocab();
        Tensor head = params.weight(headName);
        Tensor dhead = params.grad(headName);
        // output layer + loss + their backward, one chunk of rows at a time
        for (int r0 = 0; r0 < n; r0 += chunkRows()) {
            int rows = Math.min(chunkRows(), n - r0);
            Tensor x = normF.narrowRows(r0, rows);
            k.linearForward(logits, x, head, null, rows, c, vp);
            k.crossEntropyForwardBackward(logits, losses.slice(r0, rows), targets.slice(r0, rows), rows,
                    cfg.vocabSize(), vp, gradScale / n);
            k.linearBackward(dnormF.narrowRows(r0, rows), false, dhead, null, logits, x, head, rows, c, vp);
        }
        k.fill(dresid, 0f);
        if (cfg.family() == ModelConfig.Family.LLAMA) {
            k.rmsNormBackward(dresid, params.grad("norm_f.w"), dnormF, last, params.weight("norm_f.w"), rstdF, n, c);
        } else {
            k.layerNormBackward(dresid, params.grad("norm_f.w"), params.grad("norm_f.b"), dnormF, last,
                    params.weight("norm_f.w"), meanF, rstdF, n, c);
        }
        for (int i = blocks.size() - 1; i >= 0; i--) {
            blocks.get(i).backward(dresid, scratch);
        }
        k.embeddingBackward(params.grad("embed"), cfg.family() == ModelConfig.Family.GPT2 ? params.grad("pos") : null,
                dresid, inputs, n, t, c);
        return meanLoss(n);
    }

    /** Forward only: the mean cross-entropy in nats of a batch; {@code lossesOut} (if non-null) gets each token's. */
    public double loss(int[] samples, int b, int t, float[] lossesOut) {
        loadBatch(samples, b, t);
        forwardBlocks();
        int n = b * t;
        for (int r0 = 0; r0 < n; r0 += chunkRows()) {
            int rows = Math.min(chunkRows(), n - r0);
            k.linearForward(logits, normF.narrowRows(r0, rows), params.weight(headName), null, rows, cfg.hidden(),
                    cfg.paddedVocab());
            k.crossEntropyForward(logits, losses.slice(r0, rows), targets.slice(r0, rows), rows, cfg.vocabSize(),
                    cfg.paddedVocab());
        }
        if (lossesOut != null) {
            losses.floats().get(0, lossesOut, 0, n);
        }
        return meanLoss(n);
    }

    /** Forward only: logits [b*t, vocabSize] (padding removed) for samples of t+1 tokens. For tests and tools. */
    public float[] logits(int[] samples, int b, int t) {
        loadBatch(samples, b, t);
        forwardBlocks();
        int n = b * t;
        int v = cfg.vocabSize();
        int vp = cfg.paddedVocab();
        float[] out = new float[n * v];
        for (int r0 = 0; r0 < n; r0 += chunkRows()) {
            int rows = Math.min(chunkRows(), n - r0);
            k.linearForward(logits, normF.narrowRows(r0, rows), params.weight(headName), null, rows, cfg.hidden(), vp);
            FloatBuffer z = logits.floats();
            for (int r = 0; r < rows; r++) {
                z.get(r * vp, out, (r0 + r) * v, v);
            }
        }
        return out;
    }

    private double meanLoss(int n) {
        FloatBuffer l = losses.floats();
        double sum = 0;
        for (int i = 0; i < n; i++) {
            sum += l.get(i);
        }
        return sum / n;
    }
}
