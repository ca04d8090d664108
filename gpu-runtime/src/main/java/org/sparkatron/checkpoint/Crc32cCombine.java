package org.sparkatron.checkpoint;

/**
 * The CRC32C of a concatenation from the CRC32Cs of its parts ({@code crc32c(A + B)} from {@code crc32c(A)},
 * {@code crc32c(B)} and B's length), so that parts of a file can be checksummed on several threads: zlib's
 * {@code crc32_combine} (a shift of the first CRC by the second part's length, as a matrix over GF(2) squared
 * log2(length) times), with the Castagnoli polynomial. Stateless, thread-safe.
 */
final class Crc32cCombine {
    /** The reflected Castagnoli polynomial, as {@link java.util.zip.CRC32C} uses it. */
    private static final long POLY = 0x82F63B78L;

    private Crc32cCombine() {
    }

    /** The CRC32C of A followed by B, given {@code crcA}, {@code crcB} and B's length in bytes. */
    static long combine(long crcA, long crcB, long lengthB) {
        if (lengthB <= 0) {
            return crcA;
        }
        long[] even = new long[32]; // the operator for an even power of two zero bits
        long[] odd = new long[32];
        odd[0] = POLY; // the operator for one zero bit
        long row = 1;
        for (int n = 1; n < 32; n++) {
            odd[n] = row;
            row <<= 1;
        }
        square(even, odd); // two zero bits
        square(odd, even); // four
        long crc = crcA;
        long len = lengthB;
        do { // one zero byte (eight bits) first, then doubling
            square(even, odd);
            if ((len & 1) != 0) {
                crc = times(even, crc);
            }
            len >>= 1;
            if (len == 0) {
                break;
            }
            square(odd, even);
            if ((len & 1) != 0) {
                crc = times(odd, crc);
            }
            len >>= 1;
        } while (len != 0);
        return crc ^ crcB;
    }

    private static long times(long[] mat, long vec) {
        long sum = 0;
        for (int i = 0; vec != 0; i++, vec >>>= 1) {
            if ((vec & 1) != 0) {
                sum ^= mat[i];
            }
        }
        return sum;
    }

    private static void square(long[] out, long[] mat) {
        for (int n = 0; n < 32; n++) {
            out[n] = times(mat, mat[n]);
        }
    }
}
