package org.sparkatron.model;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * All of one rank's parameters in ONE contiguous fp32 block, with the gradients in a second block of the
 * same layout (llm.c style). Each named parameter is a view into both. One block makes the optimizer, the
 * gradient norm and data-parallel all-reduce single passes over memory, with no per-parameter calls.
 *
 * <p>Built in two phases: {@link Builder#add} declares parameters in order, {@link Builder#build}
 * allocates. Not thread-safe.
 */
public final class ParameterSet {
    /**
     * One named parameter: its shape, where it lives in the block, whether weight decay applies, and its
     * role under tensor parallelism.
     */
    public record Param(String name, int[] shape, long offset, long numel, boolean decay, TpRole tp) {
    }

    /**
     * How a parameter is laid out over a tensor-parallel group (Megatron's {@code tensor_model_parallel}
     * and {@code sequence_parallel} attributes).
     */
    public enum TpRole {
        /** Every rank holds the whole parameter and computes the same gradient (row-parallel biases). */
        REPLICATED,
        /** Each rank holds a different slice; the gradient of each slice is complete on its rank. */
        SPLIT,
        /**
         * Replicated, but applied to the residual stream: under sequence parallelism each rank sees only
         * its rows, so its gradient is partial and must be summed over the TP group (norm weights and
         * biases, position embeddings). Without sequence parallelism: as {@link #REPLICATED}.
         */
        SEQUENCE
    }

    private final List<Param> params;
    private final Map<String, Param> byName;
    private final Tensor weights;
    private final Tensor grads;

    private ParameterSet(List<Param> params, long total) {
        this.params = Collections.unmodifiableList(params);
        this.byName = new LinkedHashMap<>();
        for (Param p : params) {
            byName.put(p.name(), p);
        }
        this.weights = Tensor.allocateHost(DType.F32, Math.toIntExact(total));
        this.grads = Tensor.allocateHost(DType.F32, Math.toIntExact(total));
    }

    private ParameterSet(ParameterSet layout, Tensor weights) {
        this.params = layout.params;
        this.byName = layout.byName;
        this.weights = weights;
        this.grads = layout.grads;
    }

    /**
     * The same layout over another weight block, SHARING this set's gradient block. Mixed precision uses
     * it: the layers compute from a 16-bit-rounded copy of the fp32 master weights while their gradients
     * accumulate into the one fp32 gradient block.
     */
    public ParameterSet withWeights(Tensor otherWeights) {
        if (otherWeights.numel() != weights.numel() || otherWeights.dtype() != DType.F32) {
            throw new IllegalArgumentException("weight block " + otherWeights + " does not match the layout's "
                    + weights.numel() + " fp32 elements");
        }
        return new ParameterSet(this, otherWeights);
    }

    public static Builder builder() {
        return new Builder();
    }

    /** Declares parameters in the order they are laid out. */
    public static final class Builder {
        private final List<Param> list = new ArrayList<>();
        private long next;

        /** Adds a replicated parameter; 1-D parameters (biases, norm weights) are excluded from weight decay. */
        public Builder add(String name, int... shape) {
            return add(name, TpRole.REPLICATED, shape);
        }

        /** Adds a parameter with a tensor-parallel role; 1-D parameters are excluded from weight decay. */
        public Builder add(String name, TpRole tp, int... shape) {
            long n = 1;
            for (int d : shape) {
                n *= d;
            }
            list.add(new Param(name, shape.clone(), next, n, shape.length > 1, tp));
            next += n;
            return this;
        }

        public ParameterSet build() {
            return new ParameterSet(list, next);
        }
    }

    public List<Param> params() {
        return params;
    }

    public Param param(String name) {
        Param p = byName.get(name);
        if (p == null) {
            throw new IllegalArgumentException("no parameter named '" + name + "'");
        }
        return p;
    }

    public boolean has(String name) {
        return byName.containsKey(name);
    }

    /** Total number of scalar parameters. */
    public long numel() {
        return weights.numel();
    }

    /** The whole weight block (flat). */
    public Tensor weights() {
        return weights;
    }

    /** The whole gradient block (flat, same layout). */
    public Tensor grads() {
        return grads;
    }

    public Tensor weight(String name) {
        return view(weights, param(name));
    }

    public Tensor grad(String name) {
        return view(grads, param(name));
    }

    public void zeroGrads() {
        java.nio.FloatBuffer g = grads.floats();
        float[] zeros = new float[(int) Math.min(grads.numel(), 1 << 14)];
        for (long i = 0, n = grads.numel(); i < n; i += zeros.length) {
            g.put((int) i, zeros, 0, (int) Math.min(zeros.length, n - i));
        }
    }

    private static Tensor view(Tensor block, Param p) {
        return block.slice(p.offset(), Math.toIntExact(p.numel())).view(p.shape());
    }
}
