package org.sparkatron.spark;

import java.util.Iterator;
import org.sparkatron.train.SampleSource;
import scala.Tuple2;

/**
 * One rank's samples as they arrive from the data shuffle: pieces keyed {@code g*(T+1) + offset}, sorted,
 * are joined into whole samples in the order the rank consumes them (global positions
 * {@code replica, replica + dp, ...}). A gap or a short sample means the shuffle lost data: that throws,
 * never trains on garbage. Single-threaded; reads the shuffle lazily as training proceeds.
 */
final class SampleStream implements SampleSource {
    private final Iterator<Tuple2<Long, int[]>> pieces;
    private final int length;
    private final int replica;
    private final int dp;
    private Tuple2<Long, int[]> pending;
    private long consumed;

    SampleStream(Iterator<Tuple2<Long, int[]>> pieces, int sampleLength, int replica, int dp) {
        this.pieces = pieces;
        this.length = sampleLength;
        this.replica = replica;
        this.dp = dp;
    }

    @Override
    public int sampleLength() {
        return length;
    }

    @Override
    public boolean next(int[] out, int offset) {
        if (pending == null && !pieces.hasNext()) {
            return false;
        }
        long expected = replica + consumed * dp;
        int filled = 0;
        while (filled < length) {
            Tuple2<Long, int[]> p = pending != null ? pending : pieces.hasNext() ? pieces.next() : null;
            pending = null;
            if (p == null) {
                throw new IllegalStateException("data shuffle ended inside sample " + expected + " (" + filled + " of "
                        + length + " tokens)");
            }
            long g = p._1() / length;
            int off = (int) (p._1() % length);
            if (g != expected || off != filled) {
                throw new IllegalStateException("data shuffle out of order: expected sample " + expected + " offset " + filled
                        + ", got sample " + g + " offset " + off);
            }
            int[] v = p._2();
            if (filled + v.length > length) {
                throw new IllegalStateException("sample " + g + " has more than " + length + " tokens");
            }
            System.arraycopy(v, 0, out, offset + filled, v.length);
            filled += v.length;
        }
        consumed++;
        return true;
    }

    @Override
    public long consumed() {
        return consumed;
    }
}
