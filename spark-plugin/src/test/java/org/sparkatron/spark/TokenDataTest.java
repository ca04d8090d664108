package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import scala.Tuple2;

/**
 * The exact samples {@link TokenData#prepare} sends each rank, against a reference written here in plain Java
 * from Megatron's definition: the usable documents in row order (partition by partition), split into contiguous
 * document ranges by data_split (Megatron's rounding), each range packed into one token stream where sample i
 * is tokens {@code [i*T, i*T+T+1)}, epochs ordered by the seeded permutation, global position g to replica
 * {@code g % dp} as its sample {@code g / dp}; validation samples likewise with seed + 1. Uneven partitions
 * (an empty one among them), several epochs, bad rows dropped, split boundaries inside partitions (their token
 * offsets sent with the counts, or fetched by a job of their own).
 */
class TokenDataTest {
    private static final int SEQ = 16;

    @Test
    @Timeout(120)
    void eachRankGetsExactlyMegatronsSamplesInOrder() {
        List<Integer[]> rows = new ArrayList<>();
        List<int[]> docs = SyntheticData.walks(150, 5);
        for (int i = 0; i < docs.size(); i++) {
            rows.add(Arrays.stream(docs.get(i)).boxed().toArray(Integer[]::new));
            if (i % 37 == 3) {
                rows.add(new Integer[] {1, 99, 2}); // out of the vocabulary: dropped
            }
            if (i % 41 == 7) {
                rows.add(null);
            }
        }
        rows.add(4, new Integer[0]);
        // 150 documents: 95,5,0 puts the split boundary inside a partition (rint(0.95 * 150) = 142)
        for (int dp : new int[] {1, 2}) {
            for (String split : new String[] {"100,0,0", "95,5,0", "60,40,0"}) {
                for (int steps : new int[] {3, 40}) { // one epoch; several
                    TrainConfig cfg = SharedSpark.config(dp, 8, steps).with("data_split", "\"" + split + "\"").with("drop_bad_rows", "true")
                            .with("eval_iters", "2").with("eval_interval", split.startsWith("100") ? "null" : "2");
                    check(frame(rows, true), cfg, docs, rows.size() - docs.size(), TokenBlocks.INLINE_ENDS);
                    check(frame(rows, false), cfg, docs, rows.size() - docs.size(), TokenBlocks.INLINE_ENDS);
                    if (steps == 40 && !split.startsWith("100")) { // the split boundary's offset fetched by a job of its own
                        check(frame(rows, true), cfg, docs, rows.size() - docs.size(), 0);
                    }
                }
            }
        }
    }

    private void check(Dataset<Row> df, TrainConfig cfg, List<int[]> docs, long bad, int inlineEnds) {
        TokenData.Prepared p = TokenData.prepare(df, cfg, 64, inlineEnds);
        try {
            String what = "dp " + cfg.dp + ", split " + cfg.dataSplit + ", steps " + cfg.steps + ", " + df.rdd().getNumPartitions() + " partitions, inline ends " + inlineEnds;
            int n = docs.size();
            double[][] m = org.sparkatron.data.gpt.Splits.matrix(org.sparkatron.data.gpt.Splits.parse(cfg.dataSplit));
            int[] t = org.sparkatron.data.gpt.Splits.documents(m, org.sparkatron.data.gpt.Splits.TRAIN, n);
            int[] v = org.sparkatron.data.gpt.Splits.documents(m, org.sparkatron.data.gpt.Splits.VALID, n);
            List<int[]> train = docs.subList(t[0], t[t.length - 1] + 1);
            List<int[]> valid = v == null || v.length == 0 ? List.of() : docs.subList(v[0], v[v.length - 1] + 1);
            List<List<int[]>> expectTrain = expected(train, cfg, (long) cfg.steps * cfg.globalBatch, cfg.seed);
            List<List<int[]>> expectValid = valid.isEmpty() ? null : expected(valid, cfg, cfg.validSamplesPerReplica() * cfg.dp, cfg.seed + 1);
            assertEquals(n, p.documents(), what);
            assertEquals(bad, p.droppedRows(), what);
            List<List<int[]>> got = collect(p, cfg.dp);
            for (int r = 0; r < cfg.dp; r++) {
                List<int[]> rank = got.get(r);
                int validCount = expectValid == null ? 0 : expectValid.get(r).size();
                assertEquals(validCount + expectTrain.get(r).size(), rank.size(), what + ": samples of rank " + r);
                for (int i = 0; i < validCount; i++) {
                    assertArrayEquals(expectValid.get(r).get(i), rank.get(i), what + ": validation sample " + i + " of rank " + r);
                }
                for (int i = 0; i < expectTrain.get(r).size(); i++) {
                    assertArrayEquals(expectTrain.get(r).get(i), rank.get(validCount + i), what + ": training sample " + i + " of rank " + r);
                }
            }
        } finally {
            p.cached().unpersist(false);
        }
    }

    /** Each rank's samples as the ranks join them (validation first: the shuffle sorts negative keys first). */
    private static List<List<int[]>> collect(TokenData.Prepared p, int dp) {
        List<int[]> flat = p.byRank().mapPartitionsWithIndex((Integer replica, Iterator<Tuple2<Long, int[]>> it) -> {
            List<Tuple2<Long, int[]>> valid = new ArrayList<>();
            List<Tuple2<Long, int[]>> train = new ArrayList<>();
            while (it.hasNext()) {
                Tuple2<Long, int[]> t = it.next();
                if (TokenData.isValid(t._1())) {
                    valid.add(new Tuple2<>(t._1() - TokenData.VALID_BASE, t._2()));
                } else {
                    train.add(t);
                }
            }
            List<int[]> out = new ArrayList<>();
            out.add(new int[] {-1}); // a rank's marker, then its samples
            for (List<Tuple2<Long, int[]>> part : List.of(valid, train)) {
                SampleStream s = new SampleStream(part.iterator(), SEQ + 1, replica, dp);
                int[] sample = new int[SEQ + 1];
                while (s.next(sample, 0)) {
                    out.add(sample.clone());
                }
            }
            return out.iterator();
        }, true).collect();
        List<List<int[]>> ranks = new ArrayList<>();
        for (int[] x : flat) {
            if (x.length == 1 && x[0] == -1) {
                ranks.add(new ArrayList<>());
            } else {
                ranks.get(ranks.size() - 1).add(x);
            }
        }
        return ranks;
    }

    /** The reference: {@code docs} packed, ordered by epoch permutations, dealt to dp replicas. */
    private static List<List<int[]>> expected(List<int[]> docs, TrainConfig cfg, long needed, long seed) {
        int[] stream = docs.stream().flatMapToInt(Arrays::stream).toArray();
        int n = (stream.length - 1) / SEQ;
        List<List<int[]>> out = new ArrayList<>();
        for (int r = 0; r < cfg.dp; r++) {
            out.add(new ArrayList<>());
        }
        for (long g = 0; g < needed; g++) {
            int[] perm = TokenData.permutation(n, seed, (int) (g / n));
            int i = perm[(int) (g % n)];
            out.get((int) (g % cfg.dp)).add(Arrays.copyOfRange(stream, i * SEQ, i * SEQ + SEQ + 1));
        }
        return out;
    }

    /**
     * The rows in list order: a local relation (contiguous slices, one per core of local[4]) after one empty
     * partition, or all in one partition.
     */
    private static Dataset<Row> frame(List<Integer[]> rows, boolean sliced) {
        List<Row> r = new ArrayList<>();
        for (Integer[] x : rows) {
            r.add(RowFactory.create((Object) x));
        }
        StructType schema = new StructType().add("tokens", DataTypes.createArrayType(DataTypes.IntegerType, true), true);
        Dataset<Row> df = SharedSpark.get().createDataFrame(r, schema);
        return sliced ? SharedSpark.get().createDataFrame(List.of(), schema).union(df) : df.coalesce(1);
    }
}
