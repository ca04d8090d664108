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
 * The demo's generated task: four secret permutations of the tokens 0..59 ("rules"); a document starts
 * with a marker token {@code 60 + r} naming its rule r, then walks from a random token under that rule:
 * {@code x, pi_r(x), pi_r(pi_r(x)), ...}. From position 2 on every next token is determined by the marker
 * and the current token, so a model that learned the rules predicts them exactly; one that did not is at
 * chance (1/64), and one that ignores the marker reaches only about 1/4 of them. The rules are fixed; the
 * documents are deterministic in the seed. Stateless.
 */
public final class SyntheticData {
    /** Walk tokens are [0, 60); markers 60..63. */
    public static final int VOCAB = 64;
    public static final int RULES = 4;
    private static final int WALK = VOCAB - RULES;
    private static final int[][] PERMS = rules();

    private SyntheticData() {
    }

    private static int[][] rules() {
        SplittableRandom rng = new SplittableRandom(20261125L);
        int[][] p = new int[RULES][WALK];
        for (int r = 0; r < RULES; r++) {
            for (int i = 0; i < WALK; i++) {
                p[r][i] = i;
            }
            for (int i = WALK - 1; i > 0; i--) {
                int j = rng.nextInt(i + 1);
                int t = p[r][i];
                p[r][i] = p[r][j];
                p[r][j] = t;
            }
        }
        return p;
    }

    /** {@code count} documents of 12 to 24 tokens (marker + walk). */
    public static List<int[]> walks(int count, long seed) {
        SplittableRandom rng = new SplittableRandom(seed);
        List<int[]> out = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            int len = 12 + rng.nextInt(13);
            int r = rng.nextInt(RULES);
            int[] doc = new int[len];
            doc[0] = WALK + r;
            doc[1] = rng.nextInt(WALK);
            for (int j = 2; j < len; j++) {
                doc[j] = PERMS[r][doc[j - 1]];
            }
            out.add(doc);
        }
        return out;
    }

    /** The token that follows {@code token} under rule {@code rule} (for checking generated text). */
    public static int next(int rule, int token) {
        return PERMS[rule][token];
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
