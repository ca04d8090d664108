package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.List;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.data.spark.TokenizeTransformer;
import org.sparkatron.data.tokenizer.Gpt2Tokenizer;
import scala.collection.immutable.Seq;

/** The Spark ML Transformer on a real local SparkSession. */
@Timeout(120)
class TokenizeTransformerTest {
    static Dataset<Row> texts(SparkSession spark, String... texts) {
        StructType schema = new StructType().add("id", DataTypes.IntegerType).add("text", DataTypes.StringType);
        Row[] rows = new Row[texts.length];
        for (int i = 0; i < texts.length; i++) {
            rows[i] = RowFactory.create(i, texts[i]);
        }
        return spark.createDataFrame(Arrays.asList(rows), schema).repartition(2);
    }

    static int[] ints(Row r, String col) {
        Seq<Object> s = r.getSeq(r.fieldIndex(col));
        int[] out = new int[s.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (Integer) s.apply(i);
        }
        return out;
    }

    @Test
    void tokenizesEveryRowAndAppendsTheEndOfDocument() {
        SparkSession spark = SparkTestSession.get();
        String[] in = {"Hello world", "second document", "Zürich ∑", "", null};
        Dataset<Row> out = new TokenizeTransformer().setInputCol("text").setOutputCol("ids").setTokenizer("gpt2")
                .transform(texts(spark, in));
        ArrayType t = (ArrayType) out.schema().apply("ids").dataType();
        assertEquals(DataTypes.IntegerType, t.elementType());
        List<Row> rows = out.orderBy("id").collectAsList();
        assertEquals(in.length, rows.size());
        Gpt2Tokenizer ref = new Gpt2Tokenizer();
        for (Row r : rows) {
            String text = in[r.getInt(0)];
            if (text == null) {
                assertTrue(r.isNullAt(r.fieldIndex("ids")), "null text gives null tokens");
                continue;
            }
            int[] ids = ints(r, "ids");
            assertArrayEquals(ref.encodeDocument(text), ids, text);
            if (text.isEmpty()) {
                assertEquals(0, ids.length, "an empty text has no end-of-document, as in Megatron's preprocess_data");
                continue;
            }
            assertEquals(Gpt2Tokenizer.EOD, ids[ids.length - 1]);
        }
        int[] first = ints(rows.get(0), "ids");
        assertArrayEquals(new int[] {15496, 995, 50256}, first);
    }

    @Test
    void worksInAPipelineAndWithoutEod() throws Exception {
        SparkSession spark = SparkTestSession.get();
        TokenizeTransformer tt = new TokenizeTransformer().setAppendEod(false);
        Dataset<Row> out = new Pipeline().setStages(new PipelineStage[] {tt}).fit(texts(spark, "Hello world")).transform(
                texts(spark, "Hello world"));
        assertArrayEquals(new int[] {15496, 995}, ints(out.first(), "tokens"));
        assertEquals(tt.uid(), tt.copy(new org.apache.spark.ml.param.ParamMap()).uid());
    }

    @Test
    void badColumnsAreRefusedByName() {
        SparkSession spark = SparkTestSession.get();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> new TokenizeTransformer().setInputCol("body").transform(texts(spark, "x")));
        assertTrue(e.getMessage().contains("'body'") && e.getMessage().contains("text"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> new TokenizeTransformer().setInputCol("id").transform(texts(spark, "x")));
        assertTrue(e.getMessage().contains("must be a string"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> new TokenizeTransformer().setOutputCol("id").transform(texts(spark, "x")));
        assertTrue(e.getMessage().contains("already exists"), e.getMessage());
    }
}
