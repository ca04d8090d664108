package org.sparkatron.spark;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
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
     * {@code dropBad}. Runs one Spark job: a pass over the column that packs each partition's usable documents
     * into one cached block ({@link TokenBlocks}) and returns their counts; plus, when a data_split boundary cuts a
     * partition of more than {@link TokenBlocks#INLINE_ENDS} documents, one small job on that partition. The
     * packing into samples runs in the training job's first stage, from the cached blocks. Throws
     * IllegalArgumentException (after a third small job that fetches an example of a refused row).
     */
    static Prepared prepare(Dataset<?> df, TrainConfig cfg, int vocab) {
        return prepare(df, cfg, vocab, TokenBlocks.INLINE_ENDS);
    }

    /** {@link #prepare} with partitions of more than {@code inlineEnds} documents sending only their counts. */
    static Prepared prepare(Dataset<?> df, TrainConfig cfg, int vocab, int inlineEnds) {
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
        String q = "`" + col.replace("`", "``") + "`";
        // one pass over the column: each partition's usable documents into one cached block, the rows counted
        JavaRDD<int[]> blocks = df.select(functions.col(q)).queryExecution().toRdd().toJavaRDD()
                .mapPartitions(new TokenBlocks.Build(vocab)).persist(StorageLevel.MEMORY_AND_DISK());
        List<long[]> stats = blocks.map(b -> TokenBlocks.stats(b, inlineEnds)).collect();
        int parts = stats.size();
        long[] docStarts = new long[parts + 1];
        long nulls = 0;
        long empties = 0;
        long outOfVocab = 0;
        for (int i = 0; i < parts; i++) {
            docStarts[i + 1] = docStarts[i] + stats.get(i)[0];
            nulls += stats.get(i)[2];
            empties += stats.get(i)[3];
            outOfVocab += stats.get(i)[4];
        }
        long docTotal = docStarts[parts];
        long badRows = nulls + empties + outOfVocab;
        if (badRows > 0 && !cfg.dropBadRows) {
            blocks.unpersist(false);
            throw new IllegalArgumentException("input column '" + col + "' has " + badRows + " bad row(s) of " + (docTotal + badRows)
                    + ": " + nulls + " null, " + empties + " empty, " + outOfVocab + " with token ids outside [0, "
                    + vocab + ") (the model's vocab_size); example row: " + badExample(df.toDF(), q, vocab)
                    + " (set drop_bad_rows=true to drop them instead)");
        }
        // Megatron's data_split over the documents in row order: contiguous ranges for training and validation
        double[][] matrix = Splits.matrix(Splits.parse(cfg.dataSplit));
        long[] train = range(matrix[Splits.TRAIN], docTotal);
        long[] valid = range(matrix[Splits.VALID], docTotal);
        if (train == null) {
            blocks.unpersist(false);
            throw new IllegalArgumentException("data_split '" + cfg.dataSplit + "' leaves no training documents of the " + docTotal + " rows");
        }
        if (valid == null && cfg.evalIntervalGiven) {
            blocks.unpersist(false);
            throw new IllegalArgumentException("eval_interval is set but data_split '" + cfg.dataSplit + "' leaves no validation "
                    + "documents (give the validation part a weight, e.g. 90,10,0)");
        }
        long[][] ranges = valid == null ? new long[][] {train} : new long[][] {train, valid};
        long[][] perPartition = splitTokens(blocks, stats, docStarts, ranges);
        int t = cfg.seqLen;
        Stream trainStream = Stream.of(perPartition, 0, t, (long) cfg.steps * cfg.globalBatch);
        if (trainStream.n == 0) {
            blocks.unpersist(false);
            throw new IllegalArgumentException("input column '" + col + "' holds " + trainStream.tokens + " tokens in "
                    + (train[1] - train[0]) + " usable row(s)" + (valid != null ? " of the training split" : "")
                    + ": fewer than one sample of seq_len + 1 = " + (t + 1) + " tokens");
        }
        // each epoch's sample order, computed once here and sent with the packing function to its tasks
        JavaPairRDD<Long, int[]> keyed = blocks.mapPartitionsWithIndex(new TokenBlocks.SamplePieces(docStarts, train, trainStream.starts, t,
                (int) trainStream.n, TokenBlocks.epochPositions((int) trainStream.n, trainStream.epochs, cfg.seed),
                trainStream.needed, 0), true).mapToPair(x -> x);
        Stream validStream = null;
        if (valid != null) {
            validStream = Stream.of(perPartition, 1, t, cfg.validSamplesPerReplica() * cfg.dp);
            if (validStream.n == 0) {
                blocks.unpersist(false);
                throw new IllegalArgumentException("the validation split of data_split '" + cfg.dataSplit + "' holds " + validStream.tokens
                        + " tokens: fewer than one sample of seq_len + 1 = " + (t + 1) + " tokens");
            }
            keyed = keyed.union(blocks.mapPartitionsWithIndex(new TokenBlocks.SamplePieces(docStarts, valid, validStream.starts, t,
                    (int) validStream.n, TokenBlocks.epochPositions((int) validStream.n, validStream.epochs, cfg.seed + 1),
                    validStream.needed, VALID_BASE), true).mapToPair(x -> x));
        }
        ShuffledRDD<Long, int[], int[]> shuffled = new ShuffledRDD<>(keyed.rdd(), new RankPartitioner(cfg, t + 1),
                tag(Long.class), tag(int[].class), tag(int[].class));
        shuffled.setSerializer(KryoRegistration.serializer(df.sparkSession().sparkContext().getConf()));
        shuffled.setKeyOrdering(scala.math.Ordering$.MODULE$.comparatorToOrdering(java.util.Comparator.<Long>naturalOrder()));
        return new Prepared(JavaPairRDD.fromRDD(shuffled, tag(Long.class), tag(int[].class)), blocks, docTotal,
                trainStream.tokens + (validStream == null ? 0 : validStream.tokens), trainStream.n, badRows, trainStream.epochs,
                valid == null ? 0 : valid[1] - valid[0], validStream == null ? 0 : validStream.n);
    }

    /** One bad row of the column (all the row's columns), for the refusal: a small Spark job on the error path only. */
    private static String badExample(Dataset<Row> rows, String q, int vocab) {
        Column bad = functions.col(q).isNull().or(functions.size(functions.col(q)).equalTo(0))
                .or(functions.expr("exists(" + q + ", x -> x IS NULL OR x < 0 OR x >= " + vocab + ")"));
        String shown = rows.where(bad).limit(1).collectAsList().get(0).toString();
        return shown.length() > 300 ? shown.substring(0, 300) + "..." : shown;
    }

    /**
     * Tokens of each split's documents in each partition ({@code [partition][split]}): whole partitions from their
     * counts; a partition that a split boundary cuts from its documents' ends, sent with the counts or, for large
     * partitions, fetched by one small job over those partitions only.
     */
    private static long[][] splitTokens(JavaRDD<int[]> blocks, List<long[]> stats, long[] docStarts, long[][] ranges) {
        int parts = stats.size();
        Map<Integer, java.util.TreeSet<Integer>> wanted = new HashMap<>();
        for (int p = 0; p < parts; p++) {
            long docs = stats.get(p)[0];
            for (long[] r : ranges) {
                for (long bound : r) {
                    long local = bound - docStarts[p];
                    if (local > 0 && local < docs && stats.get(p).length == 5) {
                        wanted.computeIfAbsent(p, k -> new java.util.TreeSet<>()).add((int) local);
                    }
                }
            }
        }
        Map<Integer, int[]> asked = new HashMap<>();
        wanted.forEach((p, d) -> asked.put(p, d.stream().mapToInt(Integer::intValue).toArray()));
        Map<Integer, long[]> fetched = asked.isEmpty() ? Map.of() : TokenBlocks.ends(blocks, asked);
        long[][] out = new long[parts][ranges.length];
        for (int p = 0; p < parts; p++) {
            long[] s = stats.get(p);
            for (int r = 0; r < ranges.length; r++) {
                long lo = Math.min(s[0], Math.max(0, ranges[r][0] - docStarts[p]));
                long hi = Math.min(s[0], Math.max(0, ranges[r][1] - docStarts[p]));
                out[p][r] = hi <= lo ? 0 : endOf(s, p, hi, asked, fetched) - endOf(s, p, lo, asked, fetched);
            }
        }
        return out;
    }

    /** Tokens of partition {@code p}'s documents {@code [0, d)}. */
    private static long endOf(long[] stats, int p, long d, Map<Integer, int[]> asked, Map<Integer, long[]> fetched) {
        if (d == 0) {
            return 0;
        }
        if (d == stats[0]) {
            return stats[1];
        }
        if (stats.length > 5) {
            return stats[5 + (int) d - 1];
        }
        return fetched.get(p)[java.util.Arrays.binarySearch(asked.get(p), (int) d)];
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
        static Stream of(long[][] perPartition, int split, int t, long needed) {
            long[] starts = new long[perPartition.length + 1];
            for (int i = 0; i < perPartition.length; i++) {
                starts[i + 1] = starts[i] + perPartition[i][split];
            }
            long tokens = starts[perPartition.length];
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

    /** The seeded order of epoch {@code e}: Fisher-Yates over [0, n). Same on every JVM. */
    static int[] permutation(int n, long seed, int epoch) {
        return PackedSamples.permutation(n, seed * 0x9E3779B97F4A7C15L + epoch);
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
