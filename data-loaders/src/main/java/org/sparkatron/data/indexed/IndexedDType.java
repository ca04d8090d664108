package org.sparkatron.data.indexed;

/**
 * The element types of Megatron's indexed dataset, with the one-byte codes its {@code .idx} header
 * stores (megatron/core/datasets/indexed_dataset.py, {@code DType}). Token data is read as ints; the
 * float codes are known so that a file using them is named precisely when it is refused.
 */
public enum IndexedDType {
    UINT8(1, 1, true),
    INT8(2, 1, true),
    INT16(3, 2, true),
    INT32(4, 4, true),
    INT64(5, 8, true),
    FLOAT64(6, 8, false),
    FLOAT32(7, 4, false),
    UINT16(8, 2, true);

    /** Code stored in the header. */
    public final int code;
    /** Bytes per element. */
    public final int size;
    /** Whether token ids can be read from it. */
    public final boolean integer;

    IndexedDType(int code, int size, boolean integer) {
        this.code = code;
        this.size = size;
        this.integer = integer;
    }

    /** The type for a header code, or null if the code is not one Megatron defines. */
    public static IndexedDType fromCode(int code) {
        for (IndexedDType t : values()) {
            if (t.code == code) {
                return t;
            }
        }
        return null;
    }

    /**
     * The type Megatron picks for a vocabulary ({@code DType.optimal_dtype}): uint16 below 65500
     * tokens, int32 otherwise.
     */
    public static IndexedDType optimalFor(int vocabSize) {
        return vocabSize < 65500 ? UINT16 : INT32;
    }

    /** The largest token id this type can hold (exclusive bound minus one). */
    public long maxToken() {
        switch (this) {
            case UINT8: return 0xFF;
            case INT8: return Byte.MAX_VALUE;
            case INT16: return Short.MAX_VALUE;
            case UINT16: return 0xFFFF;
            case INT32: return Integer.MAX_VALUE;
            default: return Integer.MAX_VALUE;
        }
    }
}
