package org.sparkatron.precision;

import java.util.Locale;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The numeric precision a model computes in (see docs/precision.md for exactly which tensors are
 * rounded where). Master weights, gradients, optimizer state, the loss and norm statistics are fp32 in
 * every mode.
 *
 * <ul>
 *   <li>{@link #FP32}: everything fp32 (the default).</li>
 *   <li>{@link #BF16}: weights and activations (and activation gradients) stored as bfloat16, GEMMs
 *       accumulating in fp32: Megatron's {@code --bf16}.</li>
 *   <li>{@link #FP16}: the same with IEEE half precision, whose range ends at 65504, so the loss is scaled
 *       dynamically ({@link DynamicGradScaler}): Megatron's {@code --fp16}.</li>
 *   <li>{@link #FP8}: BF16 everywhere, except that the transformer layers' linear GEMMs take FP8 operands
 *       (E4M3 / E5M2 with per-tensor scales, {@link Fp8Recipe}): Megatron's {@code --bf16 --fp8-format ...}
 *       through Transformer Engine. The embedding and the output layer stay bf16, as in Megatron.</li>
 * </ul>
 * On the CPU device 16-bit activations are emulated by rounding fp32 values to the nearest 16-bit value
 * wherever a GPU kernel would store 16 bits, so CPU tests see the numerics a GPU run has; the model's 16-bit
 * weights are real BF16/F16 elements on every device.
 */
public enum Precision {
    FP32,
    BF16,
    FP16,
    FP8;

    /** Parses {@code fp32 | bf16 | fp16 | fp8} (case-insensitive); anything else is refused naming the choices. */
    public static Precision parse(String s) {
        if (s != null) {
            switch (s.trim().toLowerCase(Locale.ROOT)) {
                case "fp32", "float32", "f32" -> {
                    return FP32;
                }
                case "bf16", "bfloat16" -> {
                    return BF16;
                }
                case "fp16", "float16", "f16", "half" -> {
                    return FP16;
                }
                case "fp8" -> {
                    return FP8;
                }
                default -> {
                }
            }
        }
        throw new IllegalArgumentException("precision must be fp32, bf16, fp16 or fp8, got '" + s + "'");
    }

    /** The lower-case name used by the CLI and configs. */
    public String label() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** True for the 16-bit modes (FP8 included: bf16 outside its GEMMs), which keep a separate fp32 master copy of the weights. */
    public boolean isReduced() {
        return this != FP32;
    }

    /** True where the loss must be scaled to keep gradients inside the format's range (fp16). */
    public boolean needsLossScaling() {
        return this == FP16;
    }

    /** {@code f} rounded to this precision's storage format (identity for fp32). */
    public float round(float f) {
        return switch (this) {
            case FP32 -> f;
            case BF16, FP8 -> HalfFloats.roundToBf16(f);
            case FP16 -> HalfFloats.roundToF16(f);
        };
    }

    /** Rounds the first {@code count} fp32 elements of host tensor {@code t} in place (nothing for fp32). */
    public void round(Tensor t, long count) {
        switch (this) {
            case FP32 -> {
            }
            case BF16, FP8 -> HalfFloats.roundToBf16(t, count);
            case FP16 -> HalfFloats.roundToF16(t, count);
        }
    }

    /** Rounds all of {@code t} in place (nothing for fp32). */
    public void round(Tensor t) {
        round(t, t.numel());
    }

    /** The 16-bit storage format of the reduced modes (BF16, F16; BF16 for FP8 outside its GEMMs); F32 for fp32. */
    public DType format() {
        return switch (this) {
            case FP32 -> DType.F32;
            case BF16, FP8 -> DType.BF16;
            case FP16 -> DType.F16;
        };
    }
}
