package org.sparkatron.precision;

import java.util.function.Consumer;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One model's FP8 recipe state on its rank's device, and the quantisation of GEMM operands with it
 * (Transformer Engine's per-tensor {@code fp8_meta}). Each FP8 linear layer {@code j} of {@code m} owns
 * three tensors: its input ({@link #xSlot}) and weight ({@link #wSlot}), cast to E4M3, and its output
 * gradient ({@link #dySlot}), cast to the recipe's backward format. Per slot the device holds an amax
 * history {@code [len, slots]} (row 0 collects the current pass's amaxes; {@code len} is 1 for tensorwise
 * scaling), a scale and its inverse, all F32, scales starting at 1.
 *
 * <ul>
 *   <li>Delayed scaling: a cast uses the slot's current scale and records the tensor's amax in row 0
 *       (fused into the cast). {@link #finishPass()} then takes the maximum of row 0 over the tensor-parallel
 *       group and the data-parallel replicas (Megatron's amax reduction group) and runs the update kernel:
 *       the scales for pass n come from the amaxes of passes up to n - 1.</li>
 *   <li>Tensorwise (current) scaling: each cast first measures the tensor's amax and computes its scale
 *       from it; nothing carries over between passes and nothing is reduced (sequence-parallel inputs are
 *       gathered before the cast, so every TP rank sees the same whole tensor).</li>
 * </ul>
 * Forward-only passes ({@code training = false} in {@link #beginPass}) use the scales without recording
 * amaxes, so evaluation leaves the recipe state as it was.
 *
 * <p>Stream order: everything here is kernels and communicator operations on the rank's device; nothing is
 * read on the host. One rank's thread; a failed peer makes {@link #finishPass()} throw the communicator's
 * exception.
 */
public final class Fp8State implements AutoCloseable {
    private final Fp8Recipe recipe;
    private final RankContext ctx;
    private final Device device;
    private final Kernels k;
    private final int layers;
    private final int slots;
    private final int len;
    private final Tensor history;  // [len, slots]
    private final Tensor scale;    // [slots]
    private final Tensor scaleInv; // [slots]
    private Tensor dy8;            // the output-gradient operand, shared by the layers (one backward at a time)
    private long dyCapacity;
    private Consumer<Tensor> replicaMax;
    private boolean training;

    /** State for {@code layers} FP8 linear layers on the context's device, scales 1, history zero. */
    public Fp8State(RankContext ctx, Fp8Recipe recipe, int layers) {
        this.recipe = recipe;
        this.ctx = ctx;
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.layers = layers;
        this.slots = 3 * layers;
        this.len = recipe.scaling() == Fp8Recipe.Scaling.DELAYED ? recipe.amaxHistoryLen() : 1;
        this.history = device.zeros(MemoryKind.WORKSPACE, DType.F32, (long) len, Math.max(1, slots));
        this.scale = device.allocate(MemoryKind.WORKSPACE, DType.F32, Math.max(1, slots));
        this.scaleInv = device.allocate(MemoryKind.WORKSPACE, DType.F32, Math.max(1, slots));
        k.fill(scale, 1f);
        k.fill(scaleInv, 1f);
    }

    /** The F32 bytes of the state for {@code layers} FP8 layers under {@code recipe} (for the memory estimate). */
    public static long stateBytes(Fp8Recipe recipe, int layers) {
        long s = Math.max(1, 3L * layers);
        long len = recipe.scaling() == Fp8Recipe.Scaling.DELAYED ? recipe.amaxHistoryLen() : 1;
        return 4 * (len * s + 2 * s);
    }

    public Fp8Recipe recipe() {
        return recipe;
    }

    public int layers() {
        return layers;
    }

    public int xSlot(int layer) {
        return 2 * layer;
    }

    public int wSlot(int layer) {
        return 2 * layer + 1;
    }

    public int dySlot(int layer) {
        return 2 * layers + layer;
    }

    /** The format of a slot's casts: E4M3 for inputs and weights, the recipe's backward format for gradients. */
    public Fp8Format format(int slot) {
        return slot < 2 * layers ? Fp8Format.E4M3 : recipe.format().backward();
    }

    /** The dtype FP8 operands of {@code format} have on this device (codes, or F32 values on the CPU). */
    public DType operandDType(Fp8Format format) {
        return device.storageOf(format.dtype());
    }

    /** The device tensors: amax history [len, slots], scale [slots], scale_inv [slots] (for checkpoints and tests). */
    public Tensor history() {
        return history;
    }

    public Tensor scale() {
        return scale;
    }

    public Tensor scaleInv() {
        return scaleInv;
    }

    /**
     * Where the data-parallel maximum of the amaxes happens (a {@code MAX} all-reduce over the replicas of a
     * device tensor, in place); null for none. The training loop sets it ({@link org.sparkatron.train.GradientSync}).
     */
    public void setReplicaMax(Consumer<Tensor> replicaMax) {
        this.replicaMax = replicaMax;
    }

    /** The output-gradient operand buffer for {@code count} elements (allocated by {@link #prepare}). */
    Tensor dyBuffer(long count) {
        if (dy8 == null || count > dyCapacity) {
            prepareDy(count);
        }
        return dy8.slice(0, count);
    }

    /** Allocates the shared output-gradient operand for layers of at most {@code count} elements now. */
    public void prepareDy(long count) {
        if (dy8 != null && count <= dyCapacity) {
            return;
        }
        device.release(dy8);
        dy8 = device.allocate(MemoryKind.WORKSPACE, operandDType(recipe.format().backward()), count);
        dyCapacity = count;
    }

    /** Starts a pass: {@code training} passes record amaxes for delayed scaling; forward-only ones do not. */
    public void beginPass(boolean training) {
        this.training = training;
    }

    /** {@code dst} = the FP8 operand of {@code src[0, count)} in slot {@code slot}'s format and scale. */
    void quantize(Tensor dst, Tensor src, long count, int slot) {
        Fp8Format f = format(slot);
        if (recipe.scaling() == Fp8Recipe.Scaling.TENSORWISE) {
            Tensor amax = history; // len 1: row 0 is this pass's amax
            k.fill(amax.slice(slot, 1), 0f);
            k.amax(src, count, amax, slot);
            k.fp8ScaleFromAmax(amax, scale, scaleInv, slot, 1, f.max());
            k.castToFp8(dst, src, count, f, scale, slot, null, 0);
        } else {
            k.castToFp8(dst, src, count, f, scale, slot, training ? history : null, slot);
        }
    }

    /**
     * Ends a training pass (after its backward): under delayed scaling, the maximum of this pass's amaxes over
     * the tensor-parallel group and the replicas, then the scale update of every slot. Nothing under
     * tensorwise scaling.
     */
    public void finishPass() {
        if (recipe.scaling() != Fp8Recipe.Scaling.DELAYED || layers == 0) {
            return;
        }
        Tensor current = history.slice(0, slots);
        if (ctx.tp().size() > 1) {
            ctx.tp().group().allReduce(current, ReduceOp.MAX);
        }
        if (replicaMax != null) {
            replicaMax.accept(current);
        }
        boolean useMax = recipe.amaxComputeAlgo() == Fp8Recipe.AmaxAlgo.MAX;
        float pow = (float) Math.pow(2, -recipe.margin());
        k.fp8DelayedScaling(history, scale, scaleInv, len, slots, 0, 2 * layers, useMax, Fp8Format.E4M3.max() * pow);
        k.fp8DelayedScaling(history, scale, scaleInv, len, slots, 2 * layers, layers, useMax,
                recipe.format().backward().max() * pow);
    }

    /** The checkpoint metadata key ({@code extra}) of {@link #saveState()}'s text. */
    public static final String CHECKPOINT_KEY = "fp8_state";

    /**
     * The recipe state as one line of text, exact: {@code "v1 <len> <slots> <base64>"} with the history,
     * scales and inverse scales as little-endian F32 in that order. Synchronises (checkpoints, not steps).
     * Under delayed scaling every rank of a TP x DP layout holds the same state, so one rank's text restores all.
     */
    public String saveState() {
        java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(4 * (len * slots + 2 * slots)).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        for (Tensor t : new Tensor[] {history, scale, scaleInv}) {
            Tensor h = device.toHost(t);
            java.nio.FloatBuffer f = h.floats();
            for (int i = 0; i < f.limit() && i < t.numel(); i++) {
                b.putFloat(f.get(i));
            }
        }
        return "v1 " + len + " " + slots + " " + java.util.Base64.getEncoder().encodeToString(b.array());
    }

    /**
     * Restores {@link #saveState()}'s text. Returns null when restored, else why not (another history length or
     * FP8 layer set: the state then stays as it is, scales from 1, and training continues).
     */
    public String restoreState(String text) {
        String[] p = text == null ? new String[0] : text.split(" ");
        if (p.length != 4 || !p[0].equals("v1")) {
            return "unreadable fp8 state";
        }
        if (Integer.parseInt(p[1]) != len || Integer.parseInt(p[2]) != slots) {
            return "saved fp8 state has history length " + p[1] + " and " + p[2] + " slots, this model " + len + " and " + slots;
        }
        java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(java.util.Base64.getDecoder().decode(p[3])).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        for (Tensor t : new Tensor[] {history, scale, scaleInv}) {
            Tensor h = Tensor.allocateHost(DType.F32, t.numel());
            java.nio.FloatBuffer f = h.floats();
            for (int i = 0; i < t.numel(); i++) {
                f.put(i, b.getFloat());
            }
            device.fromHost(t, h);
        }
        return null;
    }

    @Override
    public void close() {
        device.release(history);
        device.release(scale);
        device.release(scaleInv);
        device.release(dy8);
        dy8 = null;
    }
}
