package org.sparkatron.tensor;

/**
 * Element types a tensor can hold. Floating types beyond F32 are storage formats: CPU kernels compute in
 * F32 and round on store (bf16 is emulated exactly by round-to-nearest-even on the upper 16 bits).
 */
public enum DType {
    F32(4, "F32"),
    /** Device scalars that accumulate a step's loss and squared norms; never model data. */
    F64(8, "F64"),
    BF16(2, "BF16"),
    F16(2, "F16"),
    FP8_E4M3(1, "F8_E4M3"),
    FP8_E5M2(1, "F8_E5M2"),
    I32(4, "I32"),
    I64(8, "I64");

    private final int bytes;
    private final String safetensorsName;

    DType(int bytes, String safetensorsName) {
        this.bytes = bytes;
        this.safetensorsName = safetensorsName;
    }

    /** Size of one element in bytes. */
    public int bytes() {
        return bytes;
    }

    /** The dtype string the safetensors format uses ("F32", "BF16", ...). */
    public String safetensorsName() {
        return safetensorsName;
    }

    public boolean isFloatingPoint() {
        return this != I32 && this != I64;
    }

    /** Parses a safetensors dtype string; throws with the offending name if unsupported. */
    public static DType fromSafetensors(String name) {
        for (DType t : values()) {
            if (t.safetensorsName.equals(name)) {
                return t;
            }
        }
        throw new IllegalArgumentException("unsupported safetensors dtype '" + name
                + "' (supported: F32, F64, BF16, F16, F8_E4M3, F8_E5M2, I32, I64)");
    }
}
