package org.sparkatron.spark;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.rdd.ShuffledRDD;
import org.apache.spark.sql.Column;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.storage.StorageLevel;
import org.sparkatron.data.gpt.Splits;
import org.sparkatron.train.PackedSamples;
import scala.Tuple2;
import scala.reflect.ClassTag$;
import scala.reflect.ClassTag;

/**
 * The driver side of the data path: validates the token column, packs documents into fixed-length
 * samples in one global token stream (as Megatron's GPT dataset: sample i is tokens
 * {@code [i*T, i*T+T+1)}), orders them by a seeded permutation per epoch, and shuffles the pieces of each
 * sample to the rank that trains on it, sorted by the order that rank consumes them in.
 *
 * <p>Global position {@code g} (epoch {@code e}, permuted index {@code p}: {@code g = e*N + p}) goes to
 * data-parallel replica {@code g % dp} as its local sample {@code g / dp}; so step s of every replica
 * together covers global positions {@code [s*G, (s+1)*G)} for global batch G, exactly what one rank with
 * batch G would read (this is what the DP parity test relies on). Only the samples the job consumes
 * ({@code steps * global_batch}) are shipped; each replica gets exactly {@code steps * G / dp}, so uneven
 * or empty input partitions never make ranks run different step counts.
 *
 * <p>The shuffle uses Kryo with registered classes regardless of the session's serializer.
 */
final class TokenData {
    private TokenData() {
    }

    /** What {@link #prepare} found and built. */
    record Prepared(JavaPairRDD<Long, int[]> byRank, JavaRDD<int[]> cached, long documents, long tokens, long samplesPerEpoch,
                    long droppedRows, int epochs, long validDocuments, long validSamplesPerEpoch) {
        boolean validation() {
            return validSamplesPerEpoch > 0;
        }
    }

    /**
     * Validation pieces are keyed {@code VALID_BASE + g*(T+1) + offset} (negative, so the sorted shuffle hands
     * every rank its validation samples before its training samples); {@link #isValid} tells them apart.
     */
    static final long VALID_BASE = Long.MIN_VALUE;

    static boolean isValid(long key) {
        return key < 0;
    }

    /**
     * Refuses a missing or mistyped column, and bad rows (null, empty, ids outside [0, vocab)) unless
     * {@code dropBad}. Runs two small Spark jobs (row checks, token counts). Throws IllegalArgumentException.
     */
    static Prepared prepare(Dataset<?> df, TrainConfig cfg, int vocab) {
        String col = cfg.inputCol;
        StructField field = null;
        for (StructField f : df.schema().fields()) {
            if (f.name().equals(col)) {
                field = f;
            }
        }
        if (field == null) {
            throw new IllegalArgumentException("input column '" + col + "' not found; the DataFrame has columns "
                    + String.join(", ", df.schema().fieldNames()) + " (set input_col)");
        }
        DataType type = field.dataType();
        if (!(type instanceof ArrayType at) || !at.elementType().equals(DataTypes.IntegerType)) {
            throw new IllegalArgumentException("input column '" + col + "' has type " + type.simpleString()
                    + "; expected array<int> of token ids (tokenize text first, or cast: col.cast(\"array<int>\"))");
        }
        Dataset<Row> rows = df.toDF();
        String q = "`" + col.replace("`", "``") + "`";
        Column isNull = functions.col(q).isNull();
        Column isEmpty = functions.size(functions.col(q)).equalTo(0);
        Column outside = functions.expr("exists(" + q + ", x -> x IS NULL OR x < 0 OR x >= " + vocab + ")");
        Column bad = isNull.or(isEmpty).or(outside);
        Row counts = rows.agg(
                functions.count(functions.lit(1)),
                functions.sum(functions.when(isNull, 1).otherwise(0)),
                functions.sum(functions.when(functions.not(isNull).and(isEmpty), 1).otherwise(0)),
                functions.sum(functions.when(functions.not(isNull).and(outside), 1).otherwise(0))).first();
        long total = counts.getLong(0);
        long nulls = total == 0 ? 0 : counts.getLong(1);
        long empties = total == 0 ? 0 : counts.getLong(2);
        long outOfVocab = total == 0 ? 0 : counts.getLong(3);
        long badRows = nulls + empties + outOfVocab;
        if (badRows > 0 && !cfg.dropBadRows) {
            Row example = rows.where(bad).limit(1).collectAsList().get(0);
            String shown = example.toString();
            if (shown.length() > 300) {
                shown = shown.substring(0, 300) + "...";
            }
            throw new IllegalArgumentException("input column '" + col + "' has " + badRows + " bad row(s) of " + total
                    + ": " + nulls + " null, " + empties + " empty, " + outOfVocab + " with token ids outside [0, "
                    + vocab + ") (the model's vocab_size); example row: " + shown
                    + " (set drop_bad_rows=true to drop them instead)");
        }
        Dataset<Row> good = badRows > 0 ? rows.where(functions.not(bad)) : rows;
        JavaRDD<int[]> docs = good.select(functions.col(q)).javaRDD().map(TokenData::toIds)
                .persist(StorageLevel.MEMORY_AND_DISK());
        // Megatron's data_split over the documents in row order: contiguous ranges for training and validation
        List<Long> docCounts = docs.mapPartitions(it -> {
            long c = 0;
            for (; it.hasNext(); it.next()) {
                c++;
            }
            return List.of(c).iterator();
        }).collect();
        long[] docStarts = new long[docCounts.size() + 1];
        for (int i = 0; i < docCounts.size(); i++) {
            docStarts[i + 1] = docStarts[i] + docCounts.get(i);
        }
        long docTotal = docStarts[docCounts.size()];
        double[][] matrix = Splits.matrix(Splits.parse(cfg.dataSplit));
        long[] train = range(matrix[Splits.TRAIN], docTotal);
        long[] valid = range(matrix[Splits.VALID], docTotal);
        if (train == null) {
            docs.unpersist(false);
            throw new IllegalArgumentException("data_split '" + cfg.dataSplit + "' leaves no training documents of the " + docTotal + " rows");
        }
        if (valid == null && cfg.evalIntervalGiven) {
            docs.unpersist(false);
            throw new IllegalArgumentException("eval_interval is set but data_split '" + cfg.dataSplit + "' leaves no validation "
                    + "documents (give the validation part a weight, e.g. 90,10,0)");
        }
        long[][] ranges = valid == null ? new long[][] {train} : new long[][] {train, valid};
        List<long[]> perPartition = docs.mapPartitionsWithIndex((part, it) -> {
            long[] sums = new long[ranges.length];
            for (long d = docStarts[part]; it.hasNext(); d++) {
                int len = it.next().length;
                for (int r = 0; r < ranges.length; r++) {
                    sums[r] += d >= ranges[r][0] && d < ranges[r][1] ? len : 0;
                }
            }
            return List.of(sums).iterator();
        }, true).collect();
        int t = cfg.seqLen;
        Stream trainStream = Stream.of(perPartition, 0, t, (long) cfg.steps * cfg.globalBatch);
        if (trainStream.n == 0) {
            docs.unpersist(false);
            throw new IllegalArgumentException("input column '" + col + "' holds " + trainStream.tokens + " tokens in "
                    + (train[1] - train[0]) + " usable row(s)" + (valid != null ? " of the training split" : "")
                    + ": fewer than one sample of seq_len + 1 = " + (t + 1) + " tokens");
        }
        JavaPairRDD<Long, int[]> keyed = docs.mapPartitionsWithIndex(new SamplePieces(docStarts, train, trainStream.starts, t,
                (int) trainStream.n, trainStream.epochs, trainStream.needed, cfg.seed, 0), true).mapToPair(x -> x);
        Stream validStream = null;
        if (valid != null) {
            validStream = Stream.of(perPartition, 1, t, cfg.validSamplesPerReplica() * cfg.dp);
            if (validStream.n == 0) {
                docs.unpersist(false);
                throw new IllegalArgumentException("the validation split of data_split '" + cfg.dataSplit + "' holds " + validStream.tokens
                        + " tokens: fewer than one sample of seq_len + 1 = " + (t + 1) + " tokens");
            }
            keyed = keyed.union(docs.mapPartitionsWithIndex(new SamplePieces(docStarts, valid, validStream.starts, t, (int) validStream.n,
                    validStream.epochs, validStream.needed, cfg.seed + 1, VALID_BASE), true).mapToPair(x -> x));
        }
        ShuffledRDD<Long, int[], int[]> shuffled = new ShuffledRDD<>(keyed.rdd(), new RankPartitioner(cfg, t + 1),
                tag(Long.class), tag(int[].class), tag(int[].class));
        shuffled.setSerializer(KryoRegistration.serializer(df.sparkSession().sparkContext().getConf()));
        shuffled.setKeyOrdering(scala.math.Ordering$.MODULE$.comparatorToOrdering(java.util.Comparator.<Long>naturalOrder()));
        return new Prepared(JavaPairRDD.fromRDD(shuffled, tag(Long.class), tag(int[].class)), docs, docTotal,
                trainStream.tokens + (validStream == null ? 0 : validStream.tokens), trainStream.n, badRows, trainStream.epochs,
                valid == null ? 0 : valid[1] - valid[0], validStream == null ? 0 : validStream.n);
    }

    /** Documents {@code [begin, end)} of a split's book-ends (Megatron's rounding), or null when it is empty. */
    private static long[] range(double[] bookends, long docs) {
        if (bookends == null) {
            return null;
        }
        long beg = (long) Math.rint(bookends[0] * (double) docs);
        long end = (long) Math.rint(bookends[1] * (double) docs);
        return end > beg ? new long[] {beg, end} : null;
    }

    /** One packed token stream (a split): per-partition token offsets, samples per epoch, epochs for the samples needed. */
    private record Stream(long[] starts, long tokens, long n, int epochs, long needed) {
        static Stream of(List<long[]> perPartition, int split, int t, long needed) {
            long[] starts = new long[perPartition.size() + 1];
            for (int i = 0; i < perPartition.size(); i++) {
                starts[i + 1] = starts[i] + perPartition.get(i)[split];
            }
            long tokens = starts[perPartition.size()];
            long n = tokens < t + 1L ? 0 : (tokens - 1) / t;
            if (n > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("more than 2^31 samples per epoch (" + n + "): increase seq_len");
            }
            return new Stream(starts, tokens, n, n == 0 ? 0 : (int) ((needed + n - 1) / n), needed);
        }
    }

    @SuppressWarnings("unchecked")
    static <T> ClassTag<T> tag(Class<?> c) {
        return (ClassTag<T>) ClassTag$.MODULE$.apply(c);
    }

    private static int[] toIds(Row r) {
        return SparkatronModel.ids(r, 0); // whatever external form the array has (validated non-null above)
    }

    /** The seeded order of epoch {@code e}: Fisher-Yates over [0, n). Same on every JVM. */
    static int[] permutation(int n, long seed, int epoch) {
        return PackedSamples.permutation(n, seed * 0x9E3779B97F4A7C15L + epoch);
    }

    /**
     * Cuts one input partition's tokens into pieces of samples: key {@code g*(T+1) + offset} for global
     * position g (see the class comment) and offset of the piece inside the sample; value the tokens.
     */
    static final class SamplePieces implements
            org.apache.spark.api.java.function.Function2<Integer, Iterator<int[]>, Iterator<Tuple2<Long, int[]>>> {
        private static final long serialVersionUID = 1L;
        private final long[] docStarts;
        private final long[] docRange;
        private final long[] starts;
        private final int t;
        private final int n;
        private final int epochs;
        private final long needed;
        private final long seed;
        private final long keyBase;

        /**
         * @param docStarts global index of each partition's first document
         * @param docRange  the documents {@code [begin, end)} of this stream (a data_split part)
         * @param starts    each partition's first token in this stream
         * @param keyBase   added to every key (0 for training, {@link #VALID_BASE} for validation)
         */
        SamplePieces(long[] docStarts, long[] docRange, long[] starts, int t, int n, int epochs, long needed, long seed, long keyBase) {
            this.docStarts = docStarts;
            this.docRange = docRange;
            this.starts = starts;
            this.t = t;
            this.n = n;
            this.epochs = epochs;
            this.needed = needed;
            this.seed = seed;
            this.keyBase = keyBase;
        }

        @Override
        public Iterator<Tuple2<Long, int[]>> call(Integer part, Iterator<int[]> docs) {
            long begin = starts[part];
            long end = starts[part + 1];
            if (end == begin) {
                return java.util.Collections.emptyIterator();
            }
            int[] local = new int[Math.toIntExact(end - begin)];
            int at = 0;
            for (long d = docStarts[part]; docs.hasNext(); d++) {
                int[] doc = docs.next();
                if (d >= docRange[0] && d < docRange[1]) {
                    System.arraycopy(doc, 0, local, at, doc.length);
                    at += doc.length;
                }
            }
            // inverse permutations: sample index -> position in epoch e's order
            int[][] inv = new int[epochs][];
            for (int e = 0; e < epochs; e++) {
                int[] perm = permutation(n, seed, e);
                inv[e] = new int[n];
                for (int p = 0; p < n; p++) {
                    inv[e][perm[p]] = p;
                }
            }
            List<Tuple2<Long, int[]>> out = new ArrayList<>();
            // samples i whose token range [i*t, i*t+t] overlaps [begin, end)
            long first = Math.max(0, (begin - 1) / t);
            for (long i = first; i < n && i * t < end; i++) {
                long lo = Math.max(i * t, begin);
                long hi = Math.min(i * t + t + 1, end);
                if (lo >= hi) {
                    continue;
                }
                int[] piece = java.util.Arrays.copyOfRange(local, (int) (lo - begin), (int) (hi - begin));
                int offset = (int) (lo - i * t);
                for (int e = 0; e < epochs; e++) {
                    long g = (long) e * n + inv[e][(int) i];
                    if (g < needed) {
                        out.add(new Tuple2<>(keyBase + g * (t + 1) + offset, piece));
                    }
                }
            }
            return out.iterator();
        }
    }

    /** Sends global position g to the rank of replica {@code g % dp} (TP/PP rank 0 of that replica). */
    static final class RankPartitioner extends org.apache.spark.Partitioner {
        private static final long serialVersionUID = 1L;
        private final int world;
        private final int dp;
        private final int sampleLength;
        private final int[] rankOfReplica;

        RankPartitioner(TrainConfig cfg, int sampleLength) {
            this.world = cfg.world();
            this.dp = cfg.dp;
            this.sampleLength = sampleLength;
            var layout = Layout.of(cfg);
            this.rankOfReplica = new int[dp];
            for (int r = 0; r < dp; r++) {
                rankOfReplica[r] = Layout.dataRank(layout, r);
            }
        }

        @Override
        public int numPartitions() {
            return world;
        }

        @Override
        public int getPartition(Object key) {
            long k = (Long) key;
            long g = (isValid(k) ? k - VALID_BASE : k) / sampleLength;
            return rankOfReplica[(int) (g % dp)];
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof RankPartitioner r && r.world == world && r.dp == dp && r.sampleLength == sampleLength
                    && java.util.Arrays.equals(r.rankOfReplica, rankOfReplica);
        }

        @Override
        public int hashCode() {
            return world * 31 + dp * 7 + java.util.Arrays.hashCode(rankOfReplica) + sampleLength;
        }
    }
}
