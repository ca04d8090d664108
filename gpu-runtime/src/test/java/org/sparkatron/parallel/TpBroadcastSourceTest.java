package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.train.SampleSource;

/** Every rank of a TP group gets TP rank 0's samples, and the end of the data at the same sample. */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class TpBroadcastSourceTest {
    static SampleSource counting(int length, int count) {
        return new SampleSource() {
            private long n;

            @Override
            public int sampleLength() {
                return length;
            }

            @Override
            public boolean next(int[] out, int offset) {
                if (n == count) {
                    return false;
                }
                for (int i = 0; i < length; i++) {
                    out[offset + i] = (int) (n * 100 + i);
                }
                n++;
                return true;
            }

            @Override
            public long consumed() {
                return n;
            }
        };
    }

    @Test
    void everyRankSeesRankZerosSamplesAndTheEnd() throws Exception {
        List<int[]> seen = LocalRanks.run(3, (rank, world) -> {
            // only rank 0 has data; the others would produce garbage if they read their own
            SampleSource src = new TpBroadcastSource(rank == 0 ? counting(5, 4) : null, 5, world);
            int[] all = new int[4 * 5 + 2];
            for (int s = 0; s < 4; s++) {
                assertEquals(true, src.next(all, 1 + s * 5), "sample " + s);
            }
            assertFalse(src.next(new int[5], 0), "the end reaches every rank");
            assertEquals(4, src.consumed());
            return all;
        });
        int[] want = new int[4 * 5 + 2];
        for (int s = 0; s < 4; s++) {
            for (int i = 0; i < 5; i++) {
                want[1 + s * 5 + i] = s * 100 + i;
            }
        }
        for (int[] got : seen) {
            assertArrayEquals(want, got);
        }
    }
}
