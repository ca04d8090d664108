package org.sparkatron.comm.tcp;

import java.nio.ByteBuffer;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Reductions;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Rank-dependent test data and sequential references. Float inputs are small integers in [-8, 8], so every
 * partial sum of up to 8 ranks (|sum| <= 64) is exact even in bf16 (8 significant bits) and f16: results
 * must then match the reference exactly whatever the reduction order. I64 inputs carry a large rank term
 * (2^33 and up) so that truncation to 32 bits would be caught.
 */
public final class Data {
    private Data() {
    }

    public static double value(DType dt, int rank, long i, int seed) {
        long small = Math.floorMod(rank * 31L + i * 7L + seed * 13L, 17L) - 8;
        return dt == DType.I64 ? small + ((long) (rank + 1) << 33) : small;
    }

    public static void put(ByteBuffer b, DType dt, long index, double v) {
        int i = Math.toIntExact(index);
        switch (dt) {
            case F32 -> b.putFloat(4 * i, (float) v);
            case BF16 -> b.putShort(2 * i, Reductions.floatToBf16((float) v));
            case F16 -> b.putShort(2 * i, Reductions.floatToF16((float) v));
            case I32 -> b.putInt(4 * i, (int) v);
            case I64 -> b.putLong(8 * i, (long) v);
            default -> throw new IllegalArgumentException(dt.toString());
        }
    }

    public static double get(ByteBuffer b, DType dt, long index) {
        int i = Math.toIntExact(index);
        return switch (dt) {
            case F32 -> b.getFloat(4 * i);
            case BF16 -> Reductions.bf16ToFloat(b.getShort(2 * i));
            case F16 -> Reductions.f16ToFloat(b.getShort(2 * i));
            case I32 -> b.getInt(4 * i);
            case I64 -> b.getLong(8 * i);
            default -> throw new IllegalArgumentException(dt.toString());
        };
    }

    /** Tensor of count elements: element i = value(rank, firstIndex + i). */
    public static Tensor fill(DType dt, int count, int rank, long firstIndex, int seed) {
        Tensor t = Tensor.allocateHost(dt, count);
        ByteBuffer b = t.hostBuffer();
        for (int i = 0; i < count; i++) {
            put(b, dt, i, value(dt, rank, firstIndex + i, seed));
        }
        return t;
    }

    /** Sequential reduction over ranks 0..n-1 of value(r, index) (exact for the integer-valued data). */
    public static double reduce(DType dt, ReduceOp op, int n, long index, int seed) {
        double acc = value(dt, 0, index, seed);
        for (int r = 1; r < n; r++) {
            double v = value(dt, r, index, seed);
            acc = switch (op) {
                case SUM, AVG -> acc + v;
                case MAX -> Math.max(acc, v);
                case MIN -> Math.min(acc, v);
            };
        }
        if (op == ReduceOp.AVG) {
            acc = switch (dt) {
                case F32 -> (float) acc / n;
                case BF16 -> Reductions.bf16ToFloat(Reductions.floatToBf16((float) acc / n));
                case F16 -> Reductions.f16ToFloat(Reductions.floatToF16((float) acc / n));
                case I32, I64 -> (long) acc / n;
                default -> throw new IllegalArgumentException(dt.toString());
            };
        }
        return acc;
    }

    public static void check(Tensor t, long firstIndex, java.util.function.LongToDoubleFunction expected, String what) {
        ByteBuffer b = t.hostBuffer();
        for (long i = 0; i < t.numel(); i++) {
            double got = get(b, t.dtype(), i);
            double want = expected.applyAsDouble(firstIndex + i);
            if (got != want) {
                throw new AssertionError(what + ": element " + i + " is " + got + ", expected " + want);
            }
        }
    }
}
