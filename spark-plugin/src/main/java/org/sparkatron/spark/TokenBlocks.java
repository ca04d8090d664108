package org.sparkatron.spark;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.util.ArrayData;

/**
 * The usable documents of one input partition as one {@code int[]} ("block"), so that packing costs a few
 * primitive arrays per partition instead of objects per document: a header (usable documents; rows refused as
 * null, empty, or holding an id outside the vocabulary), each usable document's end offset, then all their
 * tokens in row order. Built in one pass over Spark's internal rows of the token column (no boxing), cached as
 * plain {@code int[]} (any serializer, registration required or not, can spill it).
 *
 * <p>Limits: a partition holds fewer than 2^31 tokens and documents together (as one Java array). Stateless;
 * the functions run on the executors.
 */
final class TokenBlocks {
    static final int DOCS = 0;
    static final int NULLS = 1;
    static final int EMPTIES = 2;
    static final int OUT_OF_VOCAB = 3;
    static final int HEADER = 4;
    /** Partitions with at most this many documents send their documents' ends with their counts (8 bytes each). */
    static final int INLINE_ENDS = 1 << 16;

    private TokenBlocks() {
    }

    static int docs(int[] b) {
        return b[DOCS];
    }

    /** Tokens of the block's documents {@code [0, d)}, {@code d} in {@code [0, docs]}. */
    static int end(int[] b, int d) {
        return d == 0 ? 0 : b[HEADER + d - 1];
    }

    /** Index of the block's first token. */
    static int tokenBase(int[] b) {
        return HEADER + b[DOCS];
    }

    /**
     * What the driver needs of a block: {@code {documents, tokens, nulls, empties, out of vocabulary}}, then the
     * documents' ends when there are at most {@code inlineEnds} of them.
     */
    static long[] stats(int[] b, int inlineEnds) {
        int docs = docs(b);
        long[] s = new long[5 + (docs <= inlineEnds ? docs : 0)];
        s[0] = docs;
        s[1] = b.length - tokenBase(b);
        s[2] = b[NULLS];
        s[3] = b[EMPTIES];
        s[4] = b[OUT_OF_VOCAB];
        for (int d = 0; 5 + d < s.length; d++) {
            s[5 + d] = b[HEADER + d];
        }
        return s;
    }

    /**
     * The token offsets {@code end(block, d)} the driver asked for, by partition: one small job over the cached
     * blocks of those partitions only (for documents of partitions too large to send their ends inline).
     */
    static Map<Integer, long[]> ends(JavaRDD<int[]> blocks, Map<Integer, int[]> wanted) {
        int[] parts = wanted.keySet().stream().mapToInt(Integer::intValue).sorted().toArray();
        Map<Integer, int[]> w = new java.util.HashMap<>(wanted);
        List<long[]>[] got = blocks.mapPartitionsWithIndex((part, it) -> {
            int[] b = it.next();
            int[] docs = w.get(part);
            long[] out = new long[docs.length];
            for (int i = 0; i < docs.length; i++) {
                out[i] = end(b, docs[i]);
            }
            return List.of(out).iterator();
        }, true).collectPartitions(parts);
        Map<Integer, long[]> out = new java.util.HashMap<>();
        for (int i = 0; i < parts.length; i++) {
            out.put(parts[i], got[i].get(0));
        }
        return out;
    }

    /**
     * One pass over a partition's rows (column 0: array&lt;int&gt;) into its block. Rows that are null, empty, or
     * hold a null or an id outside {@code [0, vocab)} are counted by kind and left out.
     */
    static final class Build implements FlatMapFunction<Iterator<InternalRow>, int[]> {
        private static final long serialVersionUID = 1L;
        private final int vocab;

        Build(int vocab) {
            this.vocab = vocab;
        }

        @Override
        public Iterator<int[]> call(Iterator<InternalRow> rows) {
            int[] tokens = new int[1 << 12];
            int[] ends = new int[1 << 8];
            int size = 0;
            int docs = 0;
            int nulls = 0;
            int empties = 0;
            int outside = 0;
            while (rows.hasNext()) {
                InternalRow row = rows.next();
                if (row.isNullAt(0)) {
                    nulls++;
                    continue;
                }
                ArrayData a = row.getArray(0);
                int len = a.numElements();
                if (len == 0) {
                    empties++;
                    continue;
                }
                if ((long) size + len + docs + HEADER + 1 > Integer.MAX_VALUE - 8) {
                    throw new IllegalArgumentException("an input partition holds more than 2^31 tokens: repartition the "
                            + "DataFrame into more partitions");
                }
                if (size + len > tokens.length) {
                    tokens = Arrays.copyOf(tokens, (int) Math.min(Integer.MAX_VALUE - 8, Math.max(size + len, 2L * tokens.length)));
                }
                boolean bad = false;
                for (int i = 0; i < len; i++) {
                    int v = a.isNullAt(i) ? -1 : a.getInt(i);
                    bad |= v < 0 || v >= vocab;
                    tokens[size + i] = v;
                }
                if (bad) {
                    outside++;
                    continue;
                }
                size += len;
                if (docs == ends.length) {
                    ends = Arrays.copyOf(ends, 2 * ends.length);
                }
                ends[docs++] = size;
            }
            int[] block = new int[HEADER + docs + size];
            block[DOCS] = docs;
            block[NULLS] = nulls;
            block[EMPTIES] = empties;
            block[OUT_OF_VOCAB] = outside;
            System.arraycopy(ends, 0, block, HEADER, docs);
            System.arraycopy(tokens, 0, block, HEADER + docs, size);
            return Collections.singletonList(block).iterator();
        }
    }

    /**
     * For each of {@code epochs} epochs of {@code n} samples, each sample's position in that epoch's seeded order
     * ({@link TokenData#permutation} inverted). Computed once on the driver and sent with the packing function:
     * every packing task needs it for its own samples, and a permutation cannot be computed in part (Fisher-Yates
     * is sequential); each task used to compute all of it.
     */
    static int[][] epochPositions(int n, int epochs, long seed) {
        int[][] inv = new int[epochs][];
        for (int e = 0; e < epochs; e++) {
            int[] perm = TokenData.permutation(n, seed, e);
            inv[e] = new int[n];
            for (int p = 0; p < n; p++) {
                inv[e][perm[p]] = p;
            }
        }
        return inv;
    }

    /**
     * Cuts one partition's share of a token stream (a data_split part) into pieces of samples: key
     * {@code keyBase + g*(T+1) + offset} for global position g (see {@link TokenData}) and the piece's offset
     * inside its sample; value the tokens. Reads the partition's block in place: one copy per piece.
     */
    static final class SamplePieces implements
            org.apache.spark.api.java.function.Function2<Integer, Iterator<int[]>, Iterator<scala.Tuple2<Long, int[]>>> {
        private static final long serialVersionUID = 1L;
        private final long[] docStarts;
        private final long[] docRange;
        private final long[] starts;
        private final int t;
        private final int n;
        private final int[][] positions;
        private final long needed;
        private final long keyBase;

        /**
         * @param docStarts global index of each partition's first usable document
         * @param docRange  the documents {@code [begin, end)} of this stream (a data_split part)
         * @param starts    each partition's first token in this stream
         * @param positions {@link #epochPositions} of this stream, computed once on the driver (shipped with this
         *     function in the stage's task binary, which Spark broadcasts; a function is Java-serialized, so no Kryo
         *     registration is needed whatever the session's serializer)
         * @param keyBase   added to every key (0 for training, {@link TokenData#VALID_BASE} for validation)
         */
        SamplePieces(long[] docStarts, long[] docRange, long[] starts, int t, int n,
                     int[][] positions, long needed, long keyBase) {
            this.docStarts = docStarts;
            this.docRange = docRange;
            this.starts = starts;
            this.t = t;
            this.n = n;
            this.positions = positions;
            this.needed = needed;
            this.keyBase = keyBase;
        }

        @Override
        public Iterator<scala.Tuple2<Long, int[]>> call(Integer part, Iterator<int[]> blocks) {
            long begin = starts[part];
            long end = starts[part + 1];
            if (end == begin) {
                return Collections.emptyIterator();
            }
            int[] b = blocks.next();
            // this stream's documents in the block are contiguous: its tokens are one range of the block
            int firstDoc = (int) Math.max(0, docRange[0] - docStarts[part]);
            int base = tokenBase(b) + end(b, firstDoc);
            int[][] inv = positions; // sample index -> position in epoch e's order
            int epochs = inv.length;
            List<scala.Tuple2<Long, int[]>> out = new ArrayList<>();
            // samples i whose token range [i*t, i*t+t] overlaps [begin, end)
            long first = Math.max(0, (begin - 1) / t);
            for (long i = first; i < n && i * t < end; i++) {
                long lo = Math.max(i * t, begin);
                long hi = Math.min(i * t + t + 1, end);
                if (lo >= hi) {
                    continue;
                }
                int[] piece = null;
                int offset = (int) (lo - i * t);
                for (int e = 0; e < epochs; e++) {
                    long g = (long) e * n + inv[e][(int) i];
                    if (g < needed) {
                        if (piece == null) {
                            piece = Arrays.copyOfRange(b, base + (int) (lo - begin), base + (int) (hi - begin));
                        }
                        out.add(new scala.Tuple2<>(keyBase + g * (t + 1) + offset, piece));
                    }
                }
            }
            return out.iterator();
        }
    }
}
