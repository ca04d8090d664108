package org.sparkatron.spark;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * The demo's generated task: each document is an arithmetic progression modulo {@code vocab}
 * ({@code a, a+d, a+2d, ...}) with a random start and a step in [1, vocab). The first two tokens fix the
 * rule, after which every next token is determined: a model that learned the task predicts positions 2+
 * exactly, one that did not is at chance (1/vocab). Deterministic in the seed. Stateless.
 */
public final class SyntheticData {
    private SyntheticData() {
    }

    /** {@code count} documents of 12 to 24 tokens over a vocabulary of {@code vocab} ids. */
    public static List<int[]> progressions(int count, int vocab, long seed) {
        SplittableRandom rng = new SplittableRandom(seed);
        List<int[]> out = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            int len = 12 + rng.nextInt(13);
            int a = rng.nextInt(vocab);
            int d = 1 + rng.nextInt(vocab - 1);
            int[] doc = new int[len];
            for (int j = 0; j < len; j++) {
                doc[j] = (int) ((a + (long) j * d) % vocab);
            }
            out.add(doc);
        }
        return out;
    }

    /** The documents as a DataFrame with one array&lt;int&gt; column {@code col}, in {@code partitions} partitions. */
    public static Dataset<Row> frame(SparkSession spark, List<int[]> docs, String col, int partitions) {
        List<Row> rows = new ArrayList<>(docs.size());
        for (int[] d : docs) {
            Integer[] boxed = new Integer[d.length];
            for (int i = 0; i < d.length; i++) {
                boxed[i] = d[i];
            }
            rows.add(RowFactory.create((Object) boxed));
        }
        StructType schema = new StructType().add(col, DataTypes.createArrayType(DataTypes.IntegerType, true), true);
        return spark.createDataFrame(rows, schema).repartition(partitions);
    }
}
