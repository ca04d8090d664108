package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.SplittableRandom;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.Test;

/** {@link Crc32cCombine} against {@link CRC32C} of the whole: every split of short inputs, and long parts. */
class Crc32cCombineTest {
    private static long crc(byte[] b, int from, int to) {
        CRC32C c = new CRC32C();
        c.update(b, from, to - from);
        return c.getValue();
    }

    @Test
    void combinedPartsGiveTheWholesChecksum() {
        SplittableRandom rng = new SplittableRandom(11);
        for (int n : new int[] {0, 1, 2, 7, 64, 1000, 3 << 20}) {
            byte[] b = new byte[n];
            rng.nextBytes(b);
            int[] splits = n <= 64 ? java.util.stream.IntStream.rangeClosed(0, n).toArray() : new int[] {0, 1, n / 3, n - 1, n};
            for (int at : splits) {
                assertEquals(crc(b, 0, n), Crc32cCombine.combine(crc(b, 0, at), crc(b, at, n), n - at), "n=" + n + " split at " + at);
            }
        }
    }
}
