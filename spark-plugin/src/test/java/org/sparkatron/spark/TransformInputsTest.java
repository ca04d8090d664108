package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.data.spark.TokenizeTransformer;
import org.sparkatron.data.tokenizer.TokenizerSpec;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;

/**
 * {@link SparkatronModel#transform} on every common way to build an {@code array<int>} column: rows holding
 * boxed arrays, Java lists or primitive arrays, Parquet, and the {@link TokenizeTransformer}
 * stage in the same plan (the case that failed with {@code ClassCastException: [I cannot be cast to
 * scala.collection.Seq}: Spark drops the serialize/deserialize pair between two Row mapPartitions, so the
 * model saw the tokenizer's raw {@code int[]}). Each row's loss must equal the model's loss on its ids.
 */
@Timeout(180)
class TransformInputsTest {
    static final String TOKENIZER = "../data-loaders/src/test/resources/tokenizer/tiny_bpe_tokenizer.json";

    @TempDir
    Path tmp;

    /** A seeded tiny GPT-2 whose vocabulary holds the tiny BPE tokenizer's 317 ids. */
    static SparkatronModel model() {
        ObjectNode m = SharedSpark.tinyModel().put("vocab_size", 320);
        Transformer t = new Transformer(ModelConfig.fromJson(m), new CpuDevice());
        t.initialize(5);
        return SparkatronModel.of(t);
    }

    static final int[][] DOCS = {{1, 2, 3, 4, 5}, {300, 12, 7}, {9, 9}};

    private static double[] losses(SparkatronModel model, Dataset<Row> df) {
        List<Row> out = model.transform(df).collectAsList();
        double[] l = new double[out.size()];
        for (int i = 0; i < l.length; i++) {
            assertNotNull(out.get(i).getAs("loss"), "row " + i + " has no loss: " + out.get(i));
            l[i] = out.get(i).<Double>getAs("loss");
        }
        Arrays.sort(l);
        return l;
    }

    private static double[] expected(SparkatronModel model, int[]... docs) {
        Transformer t = model.newTransformer();
        double[] l = new double[docs.length];
        for (int i = 0; i < docs.length; i++) {
            l[i] = SparkatronModel.score(t, docs[i]);
        }
        Arrays.sort(l);
        return l;
    }

    private static StructType schema() {
        return new StructType().add("tokens", DataTypes.createArrayType(DataTypes.IntegerType, true), true);
    }

    @Test
    void rowsOfBoxedArraysListsAndPrimitiveArrays() {
        SparkSession spark = SharedSpark.get();
        SparkatronModel model = model();
        double[] want = expected(model, DOCS);
        List<Row> boxed = new ArrayList<>();
        List<Row> lists = new ArrayList<>();
        List<Row> prims = new ArrayList<>();
        for (int[] d : DOCS) {
            boxed.add(RowFactory.create((Object) Arrays.stream(d).boxed().toArray(Integer[]::new)));
            lists.add(RowFactory.create(Arrays.stream(d).boxed().toList()));
            prims.add(RowFactory.create((Object) d));
        }
        assertArrayClose(want, losses(model, spark.createDataFrame(boxed, schema())), "rows of Integer[]");
        assertArrayClose(want, losses(model, spark.createDataFrame(lists, schema())), "rows of java.util.List");
        assertArrayClose(want, losses(model, spark.createDataFrame(prims, schema())), "rows of int[]");
    }

    /**
     * A Parquet file with a standard 3-level LIST of int32, written by the Parquet library itself (the
     * suite's session requires Kryo registration, which Spark's own Parquet writer does not satisfy).
     */
    @Test
    void parquet() throws Exception {
        SparkSession spark = SharedSpark.get();
        SparkatronModel model = model();
        org.apache.parquet.schema.MessageType schema = org.apache.parquet.schema.MessageTypeParser.parseMessageType(
                "message spark_schema { optional group tokens (LIST) { repeated group list { optional int32 element; } } }");
        org.apache.hadoop.fs.Path file = new org.apache.hadoop.fs.Path(tmp.resolve("tokens.parquet").toUri());
        org.apache.hadoop.conf.Configuration conf = new org.apache.hadoop.conf.Configuration();
        try (var w = org.apache.parquet.hadoop.example.ExampleParquetWriter.builder(file).withConf(conf).withType(schema).build()) {
            var groups = new org.apache.parquet.example.data.simple.SimpleGroupFactory(schema);
            for (int[] d : DOCS) {
                var g = groups.newGroup();
                var list = g.addGroup("tokens");
                for (int id : d) {
                    list.addGroup("list").append("element", id);
                }
                w.write(g);
            }
        }
        // the schema is given: inferring it runs a job whose StructType result Kryo refuses (registrationRequired)
        Dataset<Row> df = spark.read().schema("tokens array<int>").parquet(file.toString());
        assertEquals("array<int>", df.schema().apply("tokens").dataType().simpleString());
        assertArrayClose(expected(model, DOCS), losses(model, df), "Parquet");
    }

    @Test
    void tokenizerStageInTheSamePlan() throws Exception {
        SparkSession spark = SharedSpark.get();
        SparkatronModel model = model();
        String[] texts = {"the cat sat", "on the mat!", "hello hello world"};
        List<Row> rows = new ArrayList<>();
        for (String s : texts) {
            rows.add(RowFactory.create(s));
        }
        Dataset<Row> text = spark.createDataFrame(rows, new StructType().add("text", DataTypes.StringType));
        Dataset<Row> tokens = new TokenizeTransformer().setTokenizer(TOKENIZER).transform(text);
        int[][] ids = new int[texts.length][];
        try (var tok = TokenizerSpec.parse(TOKENIZER, null, java.util.Map.of()).create()) {
            for (int i = 0; i < texts.length; i++) {
                ids[i] = tok.encodeDocument(texts[i]);
                assertTrue(ids[i].length >= 2, "the text gives a scorable document");
            }
        }
        assertArrayClose(expected(model, ids), losses(model, tokens), "TokenizeTransformer -> model");
    }

    static void assertArrayClose(double[] want, double[] got, String what) {
        assertEquals(want.length, got.length, what);
        for (int i = 0; i < want.length; i++) {
            assertEquals(want[i], got[i], 1e-9, what + " row " + i);
        }
    }
}
