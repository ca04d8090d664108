package org.sparkatron.model;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * All of one rank's parameters in ONE contiguous fp32 block on the rank's device, with the gradients in a
 * second block of the same layout (llm.c style). Each named parameter is a view into both. One block makes
 * the optimizer, the gradient norm and data-parallel all-reduce single passes over memory, with no
 * per-parameter calls. Sizes and offsets are 64-bit: a block may hold more than 2^31 elements.
 *
 * <p>Built in two phases: {@link Builder#add} declares parameters in order, {@link Builder#build}
 * allocates (zero-filled, by a kernel). {@link #close()} returns both blocks to the device. Not
 * thread-safe.
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
    private final long total;
    private final long expertStart; // parameters at or after this offset belong to experts (expert parallelism)
    private final Device device;
    private Tensor weights; // replaced only by the model, between passes (replaceWeights)
    private final Tensor grads; // null for a weights-only set
    private final boolean ownsWeights;
    private final Map<String, Tensor> weightViews; // withWeightViews: each parameter's own view; else null
    /** Counted down when another thread has finished reading the training state (see {@link #holdUpdatesUntil}). */
    private volatile java.util.concurrent.CountDownLatch readers;

    private ParameterSet(List<Param> params, long total, long expertStart, Device device, boolean withGrads) {
        this.params = Collections.unmodifiableList(params);
        this.expertStart = expertStart;
        this.byName = new LinkedHashMap<>();
        for (Param p : params) {
            byName.put(p.name(), p);
        }
        this.total = total;
        this.device = device;
        this.weights = device.zeros(MemoryKind.PARAMETERS, DType.F32, total);
        this.grads = withGrads ? device.zeros(MemoryKind.GRADIENTS, DType.F32, total) : null;
        this.ownsWeights = true;
        this.weightViews = null;
    }

    private ParameterSet(ParameterSet layout, Map<String, Tensor> views) {
        this.params = layout.params;
        this.byName = layout.byName;
        this.total = layout.total;
        this.expertStart = layout.expertStart;
        this.device = layout.device;
        this.weights = null;
        this.grads = layout.grads;
        this.ownsWeights = false;
        this.weightViews = views;
    }

    /**
     * The same layout, SHARING this set's gradient block, whose {@link #weight(String)} is {@code views}' tensor
     * of that name (every parameter needs one) and which has no whole weight block: the layers under mixed
     * precision read their weights through views of a staging buffer ({@code WeightStaging}).
     */
    public ParameterSet withWeightViews(Map<String, Tensor> views) {
        for (Param p : params) {
            if (!views.containsKey(p.name())) {
                throw new IllegalArgumentException("no weight view for " + p.name());
            }
        }
        return new ParameterSet(this, views);
    }

    /**
     * Replaces the weight block by {@code block} (same element count, any floating dtype), returning the old one
     * to the caller: the model switches the block between fp32 and 16-bit elements under the distributed
     * optimizer (see {@code Transformer#finishParamGather}). Views taken of the old block are stale afterwards.
     */
    Tensor replaceWeights(Tensor block) {
        if (!ownsWeights || block.numel() != total) {
            throw new IllegalArgumentException("weight block " + block + " does not replace the " + total + " elements of "
                    + (ownsWeights ? "this set" : "a set that does not own its weights"));
        }
        Tensor old = weights;
        weights = block;
        return old;
    }

    /** The device both blocks live on. */
    public Device device() {
        return device;
    }

    /**
     * Returns the blocks this set allocated to the device; call once, when nothing uses them any more. A
     * set made by {@link #withWeightViews} owns nothing: its views belong to the caller, its gradients to
     * the original set.
     */
    public void close() {
        if (ownsWeights) {
            device.release(weights);
            device.release(grads);
        }
    }

    public static Builder builder() {
        return new Builder();
    }

    /** Declares parameters in the order they are laid out. */
    public static final class Builder {
        private final List<Param> list = new ArrayList<>();
        private long next;
        private long expertStart = -1;

        /**
         * Starts the expert region: every parameter added after this belongs to mixture-of-experts experts,
         * which expert parallelism splits and whose gradients are reduced over the expert-data-parallel group.
         * The region is the end of the block, so the two regions are two contiguous ranges.
         */
        public Builder beginExperts() {
            if (expertStart < 0) {
                expertStart = next;
            }
            return this;
        }

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

        /** The parameters declared so far, in layout order. */
        public List<Param> params() {
            return Collections.unmodifiableList(list);
        }

        /**
         * The same parameters at other offsets in blocks of {@code total} elements: a layout with gaps (Megatron's
         * padded gradient buffer, {@link org.sparkatron.parallel.GradBuffer}). Gaps belong to no parameter.
         * Refuses offsets that overlap or leave the block.
         */
        public Builder relayout(long[] offsets, long total) {
            if (offsets.length != list.size()) {
                throw new IllegalArgumentException(offsets.length + " offsets for " + list.size() + " parameters");
            }
            Builder b = new Builder();
            long[][] spans = new long[offsets.length][];
            for (int i = 0; i < offsets.length; i++) {
                Param p = list.get(i);
                if (offsets[i] < 0 || offsets[i] + p.numel() > total) {
                    throw new IllegalArgumentException(p.name() + " at " + offsets[i] + " leaves a block of " + total + " elements");
                }
                b.list.add(new Param(p.name(), p.shape(), offsets[i], p.numel(), p.decay(), p.tp()));
                spans[i] = new long[] {offsets[i], offsets[i] + p.numel()};
            }
            java.util.Arrays.sort(spans, (x, y) -> Long.compare(x[0], y[0]));
            for (int i = 1; i < spans.length; i++) {
                if (spans[i][0] < spans[i - 1][1]) {
                    throw new IllegalArgumentException("parameters overlap at element " + spans[i][0]);
                }
            }
            b.next = total;
            return b;
        }

        /** Elements declared so far: the size of the blocks {@link #build} allocates. */
        public long numel() {
            return next;
        }

        /** Allocates the weight and gradient blocks on {@code device}, zero-filled. */
        public ParameterSet build(Device device) {
            return new ParameterSet(list, next, expertStart < 0 ? next : expertStart, device, true);
        }

        /** Allocates only the weight block (a set to load, initialise or gather weights into). */
        public ParameterSet buildWeightsOnly(Device device) {
            return new ParameterSet(list, next, expertStart < 0 ? next : expertStart, device, false);
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

    /** Where the expert region starts (elements; {@link #numel()} when there are no experts). */
    public long expertOffset() {
        return expertStart;
    }

    /** Elements in the expert region (0 for a dense model). */
    public long expertNumel() {
        return total - expertStart;
    }

    /** Whether {@code p} belongs to experts (split over the expert-parallel group). */
    public boolean isExpert(Param p) {
        return p.offset() >= expertStart && p.numel() > 0 && expertStart < total;
    }

    /** Total number of scalar parameters. */
    public long numel() {
        return total;
    }

    /**
     * The whole weight block (flat): F32 elements, except under the distributed optimizer with mixed precision,
     * where during training it holds the 16-bit weights in BF16/F16 elements ({@code Transformer#finishParamGather}
     * makes it F32 for code outside a pass).
     */
    public Tensor weights() {
        if (weightViews != null) {
            throw new IllegalStateException("this parameter set has per-parameter weight views, no whole weight block");
        }
        return weights;
    }

    /** The whole gradient block (flat, same layout); throws for a weights-only set. */
    public Tensor grads() {
        if (grads == null) {
            throw new IllegalStateException("this parameter set holds weights only");
        }
        return grads;
    }

    public Tensor weight(String name) {
        if (weightViews != null) {
            param(name); // refuses unknown names as for a block
            return weightViews.get(name);
        }
        return view(weights, param(name));
    }

    public Tensor grad(String name) {
        return view(grads(), param(name));
    }

    /** Sets every weight from {@code values} (the whole block, in layout order) through a device upload. */
    public void uploadWeights(float[] values) {
        if (values.length != total) {
            throw new IllegalArgumentException(values.length + " weights for a layout of " + total);
        }
        requireF32Block();
        ByteBuffer b = ByteBuffer.allocateDirect(Math.multiplyExact(4, values.length)).order(ByteOrder.nativeOrder());
        b.asFloatBuffer().put(values);
        device.upload(weights, b);
    }

    /** The whole weight block as an array (synchronises; for tools and reports, not training steps). */
    public float[] downloadWeights() {
        requireF32Block();
        ByteBuffer b = ByteBuffer.allocateDirect(Math.toIntExact(Math.multiplyExact(4L, total))).order(ByteOrder.nativeOrder());
        device.download(b, weights);
        float[] out = new float[(int) total];
        b.asFloatBuffer().get(out);
        return out;
    }

    /**
     * Declares that another thread reads the weight block (and the optimizer's moments) until {@code done} is
     * counted down: an asynchronous checkpoint copies the live training state on its writer thread while the
     * next step's forward and backward run (which only read them). Whatever changes them next, the optimizer
     * update or the expert-bias update, first calls {@link #awaitReaders}. One reader at a time (a new hold
     * replaces a finished one).
     */
    public void holdUpdatesUntil(java.util.concurrent.CountDownLatch done) {
        readers = done;
    }

    /**
     * Waits until a reader declared by {@link #holdUpdatesUntil} is done (at once when there is none); called
     * on the training thread before the weights or the optimizer state change.
     *
     * @throws IllegalStateException if the thread is interrupted while waiting (the interrupt stays set)
     */
    public void awaitReaders() {
        java.util.concurrent.CountDownLatch r = readers;
        if (r == null) {
            return;
        }
        try {
            r.await();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while an asynchronous checkpoint copies the training state", e);
        }
        readers = null;
    }

    private void requireF32Block() {
        if (weights().dtype() != DType.F32) {
            throw new IllegalStateException("the weight block holds " + weights.dtype() + " elements between training passes: "
                    + "call Transformer.finishParamGather() first");
        }
    }

    /** Zeroes the gradient block (a kernel, stream-ordered). */
    public void zeroGrads() {
        device.kernels().zero(grads());
    }

    /** The view of {@code p} in a block of this layout (weights, gradients, moments, or a host copy). */
    public static Tensor view(Tensor block, Param p) {
        return block.slice(p.offset(), p.numel()).view(p.shape());
    }
}
