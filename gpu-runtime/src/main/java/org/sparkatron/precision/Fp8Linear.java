package org.sparkatron.precision;

import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.parallel.RankContext;
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
 * <p>Holds the FP8 input (kept for the backward, like the layer's own saved input) and the FP8 weight of
 * the current pass. One rank's thread; stream-ordered device work only.
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
    private Tensor x8; // [n, in]
    private Tensor w8; // [out, in]
    private int n;

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
        if (x8 == null || this.n != n) {
            device.release(x8);
            x8 = device.allocate(MemoryKind.ACTIVATIONS, state.operandDType(Fp8Format.E4M3), (long) n, in);
            this.n = n;
        }
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
        state.quantize(w8, w, (long) out * in, state.wSlot(layer));
        k.fp8LinearForward(y, x8, w8, state.scaleInv(), state.xSlot(layer), state.wSlot(layer), b, n, in, out);
    }

    /** dx (overwritten, or accumulated) and dw, db (accumulated) from {@code dy [n, out]}, through FP8 operands. */
    public void backward(Tensor dx, boolean accumulateDx, Tensor dw, Tensor db, Tensor dy) {
        Tensor dy8 = state.dyBuffer((long) n * out);
        state.quantize(dy8, dy, (long) n * out, state.dySlot(layer));
        k.fp8LinearBackward(dx, accumulateDx, dw, db, dy, dy8, x8, w8, state.scaleInv(), state.dySlot(layer),
                state.xSlot(layer), state.wSlot(layer), n, in, out);
    }

    /** Returns the FP8 buffers to the device ({@link #prepare} allocates them again). */
    public void close() {
        device.release(x8);
        device.release(w8);
        x8 = null;
        w8 = null;
    }

    public int in() {
        return in;
    }

    public int out() {
        return out;
    }
}
