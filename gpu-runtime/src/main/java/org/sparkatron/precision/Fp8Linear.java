package org.sparkatron.precision;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The FP8 GEMMs of one linear layer (Transformer Engine's {@code Linear} under {@code fp8_autocast}): the
 * forward casts the bf16 input and weight to E4M3 and multiplies them (fp32 accumulation, bias epilogue,
 * bf16 output); the backward casts the output gradient to the backward format (E5M2 under {@code hybrid})
 * and computes {@code dx} from it and the FP8 weight, {@code dw} from it and the FP8 input saved by the
 * forward, and the bias gradient from the unquantised gradient. Scales come from the model's
 * {@link Fp8State}.
 *
 * <p>FP8 GEMMs need every dimension a multiple of 16 (cuBLASLt on Hopper); the layer refuses other feature
 * counts when built and other token counts in {@link #prepare}, naming the layer and the number.
 *
 * <p>Holds the FP8 weight of the current pass. The FP8 input kept for the backward lives with the micro-batch
 * ({@link Saved}, {@link #bind}) so a pipeline schedule can run several forwards before their backwards; without
 * a bound buffer (full recomputation, which runs the forward again right before the backward) the layer's own.
 * The weight's FP8 copy is the same for every micro-batch of a step (same weights; delayed scales change only
 * between steps, tensorwise ones follow the unchanged weights). One rank's thread; stream-ordered device work only.
 */
public final class Fp8Linear {
    /** The multiple every FP8 GEMM dimension must be. */
    public static final int ALIGN = 16;

    private final Fp8State state;
    private final Device device;
    private final Kernels k;
    private final String name;
    private final int layer;
    private final int in;
    private final int out;
    private Tensor ownX8; // [n, in]: the saved FP8 input when no micro-batch buffer is bound (full recomputation)
    private Tensor x8;    // the saved FP8 input of the micro-batch in hand: ownX8 or a bound Saved's
    private Tensor savedScaleInv; // [1] of the bound Saved: its micro-batch's input inverse scale (tensorwise)
    private Tensor w8; // [out, in]
    private int n;
    private int ownN;

    /**
     * What one micro-batch keeps of an FP8 layer for its backward when several micro-batches are in flight
     * (pipeline schedules): the FP8 input and, for tensorwise scaling, the input's inverse scale (the next
     * micro-batch's forward recomputes the layer's shared scale slot). Activations memory, owned by the
     * micro-batch's slot ({@code BlockActivations}).
     */
    public static final class Saved {
        final Tensor x8;       // [n, in]
        final Tensor scaleInv; // [1]
        private final Device device;

        Saved(Device device, DType operand, int n, int in) {
            this.device = device;
            this.x8 = device.allocate(MemoryKind.ACTIVATIONS, operand, (long) n, in);
            this.scaleInv = device.allocate(MemoryKind.ACTIVATIONS, DType.F32, 1);
        }

        public void release() {
            device.release(x8);
            device.release(scaleInv);
        }
    }

    /** A micro-batch's buffers for this layer's saved FP8 input, {@code n} token rows. */
    public Saved saved(int n) {
        requireRows(n, name);
        return new Saved(device, state.operandDType(Fp8Format.E4M3), n, in);
    }

    /**
     * Which micro-batch's saved input the next forward writes and the next backward reads: {@code s}, or null
     * for the layer's own buffer (one micro-batch at a time: its backward recomputes its forward first).
     */
    public void bind(Saved s) {
        if (s == null) {
            x8 = ownX8;
            savedScaleInv = null;
        } else {
            x8 = s.x8;
            savedScaleInv = s.scaleInv;
        }
    }

    /**
     * @param layer this layer's index among the model's FP8 layers (its slots in {@code state})
     * @param name  for messages, e.g. "layers.3.attn.qkv"
     */
    public Fp8Linear(RankContext ctx, Fp8State state, int layer, String name, int in, int out) {
        requireFeatures(name, in, out);
        this.state = state;
        this.device = ctx.device();
        this.k = ctx.kernels();
        this.layer = layer;
        this.name = name;
        this.in = in;
        this.out = out;
    }

    /**
     * Checks {@code n} token rows and allocates the FP8 weight, the saved FP8 input and the shared gradient
     * operand for it (buffers for another row count go back to the device first).
     */
    public void prepare(int n) {
        requireRows(n, name);
        if (w8 == null) {
            w8 = device.allocate(MemoryKind.PARAMETERS, state.operandDType(Fp8Format.E4M3), (long) out, in);
        }
        if (savedScaleInv == null && (ownX8 == null || ownN != n)) {
            device.release(ownX8);
            ownX8 = device.allocate(MemoryKind.ACTIVATIONS, state.operandDType(Fp8Format.E4M3), (long) n, in);
            ownN = n;
            x8 = ownX8;
        }
        this.n = n;
        state.prepareDy((long) n * out);
    }

    /** Refuses feature counts that are not multiples of {@link #ALIGN}, naming the layer. */
    public static void requireFeatures(String name, int in, int out) {
        if (in % ALIGN != 0 || out % ALIGN != 0) {
            throw new IllegalArgumentException("precision fp8: " + name + " is " + in + " -> " + out + " features on this rank;"
                    + " FP8 GEMMs need every dimension a multiple of " + ALIGN
                    + " (choose hidden, head and MLP sizes accordingly, or keep the layer in bf16)");
        }
    }

    /** Refuses a token count that is not a multiple of {@link #ALIGN}. */
    public static void requireRows(long n, String what) {
        if (n % ALIGN != 0) {
            throw new IllegalArgumentException("precision fp8: a micro-batch of " + n + " tokens (batch x sequence length) reaches "
                    + what + "; FP8 GEMMs need it to be a multiple of " + ALIGN);
        }
    }

    /** {@code y[n, out] = x[n, in] w[out, in]^T + b} through FP8 operands. */
    public void forward(Tensor y, Tensor x, Tensor w, Tensor b, int n) {
        prepare(n);
        state.quantize(x8, x, (long) n * in, state.xSlot(layer));
        if (savedScaleInv != null && tensorwise()) { // this micro-batch's input scale, for its backward
            device.copy(savedScaleInv, state.scaleInv().slice(state.xSlot(layer), 1));
        }
        state.quantize(w8, w, (long) out * in, state.wSlot(layer));
        k.fp8LinearForward(y, x8, w8, state.scaleInv(), state.xSlot(layer), state.wSlot(layer), b, n, in, out);
    }

    /** dx (overwritten, or accumulated) and dw, db (accumulated) from {@code dy [n, out]}, through FP8 operands. */
    public void backward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor db, Tensor dy) {
        if (savedScaleInv != null && tensorwise()) { // later micro-batches' forwards have moved the shared slot
            device.copy(state.scaleInv().slice(state.xSlot(layer), 1), savedScaleInv);
        }
        Tensor dy8 = state.dyBuffer((long) n * out);
        state.quantize(dy8, dy, (long) n * out, state.dySlot(layer));
        k.fp8LinearBackward(dx, accumulateDx, dw, db, dy, dy8, x8, w8, state.scaleInv(), state.dySlot(layer),
                state.xSlot(layer), state.wSlot(layer), n, in, out);
    }

    private boolean tensorwise() {
        return state.recipe().scaling() == Fp8Recipe.Scaling.TENSORWISE;
    }

    /** Returns the layer's own FP8 buffers to the device ({@link #prepare} allocates them again). */
    public void close() {
        device.release(ownX8);
        device.release(w8);
        ownX8 = null;
        x8 = null;
        savedScaleInv = null;
        w8 = null;
    }

    public int in() {
        return in;
    }

    public int out() {
        return out;
    }
}
