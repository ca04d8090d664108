package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.SparkConf;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Every refused input gets a clear error before anything is launched (and bad rows can be dropped). */
@Timeout(120)
class RefusedInputTest {

    private static String refusal(Dataset<Row> df, TrainConfig cfg) {
        long t0 = System.nanoTime();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(df, cfg, null));
        // refused on the driver, not after Spark's ~10 minutes of slot retries
        assertTrue(System.nanoTime() - t0 < 60e9, "took too long to refuse");
        return e.getMessage();
    }

    private static Dataset<Row> rows(Integer[]... docs) {
        List<Row> rows = new ArrayList<>();
        for (Integer[] d : docs) {
            rows.add(RowFactory.create((Object) d));
        }
        List<int[]> good = SyntheticData.walks(60, 3);
        for (int[] g : good) {
            rows.add(RowFactory.create((Object) Arrays.stream(g).boxed().toArray(Integer[]::new)));
        }
        StructType schema = new StructType().add("ids", DataTypes.createArrayType(DataTypes.IntegerType, true), true)
                .add("other", DataTypes.StringType, true);
        List<Row> withOther = new ArrayList<>();
        for (Row r : rows) {
            withOther.add(RowFactory.create(r.get(0), "x"));
        }
        return SharedSpark.get().createDataFrame(withOther, schema);
    }

    private static TrainConfig cfg() {
        return SharedSpark.config(2, 4, 2).with("input_col", "\"ids\"");
    }

    @Test
    void missingColumn() {
        String m = refusal(rows(), SharedSpark.config(2, 4, 2));
        assertTrue(m.contains("input column 'tokens' not found") && m.contains("ids, other"), m);
    }

    @Test
    void wrongColumnType() {
        String m = refusal(rows(), cfg().with("input_col", "\"other\""));
        assertTrue(m.contains("'other' has type string; expected array<int>"), m);
    }

    @Test
    void wrongElementType() {
        // what JSON sources infer for numbers: array<bigint>
        Dataset<Row> longs = rows().select(org.apache.spark.sql.functions.col("ids").cast("array<bigint>").as("ids"));
        String m = refusal(longs, cfg());
        assertTrue(m.contains("'ids' has type array<bigint>; expected array<int>"), m);
    }

    @Test
    void nullEmptyAndOutOfVocabRowsAreNamedWithAnExample() {
        String m = refusal(rows(null, new Integer[0], new Integer[] {5, 64, 7}, new Integer[] {-1}), cfg());
        assertTrue(m.contains("input column 'ids' has 4 bad row(s) of 64"), m);
        assertTrue(m.contains("1 null, 1 empty, 2 with token ids outside [0, 64)"), m);
        assertTrue(m.contains("example row: ["), m);
        String only = refusal(rows(new Integer[] {5, 64, 7}), cfg());
        assertTrue(only.contains("example row: [WrappedArray(5, 64, 7)") || only.contains("5, 64, 7"), only);
    }

    @Test
    void badRowsCanBeDroppedWithACount() {
        DistributedTraining.Result r = DistributedTraining.run(rows(null, new Integer[0], new Integer[] {99}),
                cfg().with("drop_bad_rows", "true"), null);
        assertEquals(3, r.droppedRows());
        assertEquals(60, r.documents());
    }

    @Test
    void tooLittleData() {
        Dataset<Row> tiny = SyntheticData.frame(SharedSpark.get(), List.of(new int[] {1, 2, 3}), "tokens", 1);
        String m = refusal(tiny, SharedSpark.config(1, 4, 2));
        assertTrue(m.contains("holds 3 tokens") && m.contains("fewer than one sample of seq_len + 1 = 17"), m);
    }

    @Test
    void moreRanksThanSlots() {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(50, 1), "tokens", 1);
        String m = refusal(df, SharedSpark.config(8, 8, 2));
        assertTrue(m.contains("needs 8 concurrent task slots") && m.contains("offers 4"), m);
    }

    @Test
    void dynamicAllocation() {
        SparkConf c = new SparkConf().set("spark.dynamicAllocation.enabled", "true");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.checkDynamicAllocation(c));
        assertTrue(e.getMessage().contains("spark.dynamicAllocation.enabled=false"), e.getMessage());
    }

    @Test
    void badLayoutsAndConfigs() {
        Dataset<Row> df = SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(50, 1), "tokens", 1);
        assertTrue(refusal(df, SharedSpark.config(1, 4, 2).with("pp", "2").with("virtual_pp", "2"))
                .contains("pipeline size 2 x virtual 2 is larger than the 2 layers"));
        assertTrue(refusal(df, SharedSpark.config(1, 4, 2).with("tp", "4")).contains("attention heads 2 are not divisible by tp 4"));
        String sp = refusal(df, SharedSpark.config(1, 4, 2).with("micro_batch", "1").with("seq_len", "15").with("tp", "2")
                .with("sequence_parallel", "true"));
        assertTrue(sp.contains("micro_batch x seq_len = 1 x 15 tokens is not divisible by tp 2"), sp);
        IllegalArgumentException tpKeys = assertThrows(IllegalArgumentException.class,
                () -> SharedSpark.config(1, 4, 2).with("tp", "2").with("tensor_parallel", "4"));
        assertTrue(tpKeys.getMessage().contains("'tp' (2) and 'tensor_parallel' (4) disagree"), tpKeys.getMessage());
        IllegalArgumentException spKey = assertThrows(IllegalArgumentException.class,
                () -> SharedSpark.config(1, 4, 2).with("sequence_parallel", "\"yes\""));
        assertTrue(spKey.getMessage().contains("'sequence_parallel' must be true or false"), spKey.getMessage());
        assertTrue(refusal(df, SharedSpark.config(1, 4, 2).with("pp", "3")).contains("pipeline size 3 is larger than the 2 layers"));
        IllegalArgumentException e;
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(3, 4, 2));
        assertTrue(e.getMessage().contains("global_batch 4 is not divisible by dp 3"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("seq_len", "64"));
        assertTrue(e.getMessage().contains("seq_len 64 exceeds the model's max positions 32"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("micro_batch", "3"));
        assertTrue(e.getMessage().contains("not divisible by micro_batch 3"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("stpes", "3"));
        assertTrue(e.getMessage().contains("unknown config key 'stpes'"), e.getMessage());
        ObjectNode badModel = SharedSpark.tinyModel().put("n_head", 5);
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("model", badModel));
        assertTrue(e.getMessage().contains("model config: hidden size 32 is not divisible by the number of attention heads 5"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> SharedSpark.config(1, 4, 2).with("lr", "\"fast\""));
        assertTrue(e.getMessage().contains("'lr' must be a number"), e.getMessage());
    }
}
