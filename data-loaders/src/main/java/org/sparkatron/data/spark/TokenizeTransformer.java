package org.sparkatron.data.spark;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Arrays;
import org.apache.spark.ml.Transformer;
import org.apache.spark.ml.param.BooleanParam;
import org.apache.spark.ml.param.Param;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.ml.util.DefaultParamsWritable;
import org.apache.spark.ml.util.Identifiable$;
import org.apache.spark.ml.util.MLReader;
import org.apache.spark.ml.util.MLWriter;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import org.sparkatron.data.tokenizer.ModelTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;

/**
 * Spark ML {@link Transformer}: a string column in, an {@code array<int>} token column out, the
 * end-of-document token appended (by default). The tokenizer ({@code "gpt2"} or a path to a
 * tokenizer.json on any local or Hadoop path) is read once on the driver and built once per task.
 *
 * <pre>
 * new TokenizeTransformer().setInputCol("text").setOutputCol("tokens").setTokenizer("gpt2").transform(df)
 * </pre>
 *
 * <p>The output column's metadata names the tokenizer ({@link #TOKENIZER_METADATA}), so a
 * {@code SparkatronEstimator} fitted on it saves the tokenizer with the model.
 *
 * <p>Persistence (Spark ML's {@code MLWritable}/{@code MLReadable}, so {@code Pipeline.save} works):
 * {@code path/metadata} holds the Params as Spark's own stages write them, and a tokenizer.json given as a
 * path is copied to {@code path/tokenizer/} so the saved stage does not depend on the original file; the
 * loaded stage's {@code tokenizer} Param points at that copy.
 *
 * <p>Failure: a missing or non-string input column, an existing output column, or an unreadable
 * tokenizer is refused in {@link #transformSchema} / {@link #transform} with the column or path named.
 */
public final class TokenizeTransformer extends Transformer implements DefaultParamsWritable {
    /** Metadata key on the output column: the tokenizer that made it ("gpt2" or a tokenizer.json path). */
    public static final String TOKENIZER_METADATA = "sparkatron_tokenizer";
    private static final long serialVersionUID = 1L;

    private final String uid;
    private final Param<String> inputCol;
    private final Param<String> outputCol;
    private final Param<String> tokenizer;
    private final BooleanParam appendEod;

    public TokenizeTransformer() {
        this(Identifiable$.MODULE$.randomUID("sparkatronTokenize"));
    }

    public TokenizeTransformer(String uid) {
        this.uid = uid;
        inputCol = new Param<>(this, "inputCol", "text column to tokenize");
        outputCol = new Param<>(this, "outputCol", "array<int> column of token ids");
        tokenizer = new Param<>(this, "tokenizer", "gpt2, or a path to a Hugging Face tokenizer.json");
        appendEod = new BooleanParam(this, "appendEod", "append the end-of-document token to every document");
        setDefault(inputCol, "text");
        setDefault(outputCol, "tokens");
        setDefault(tokenizer, "gpt2");
        setDefault(appendEod, (Object) Boolean.TRUE);
    }

    @Override
    public String uid() {
        return uid;
    }

    public Param<String> inputCol() {
        return inputCol;
    }

    public Param<String> outputCol() {
        return outputCol;
    }

    public Param<String> tokenizer() {
        return tokenizer;
    }

    public BooleanParam appendEod() {
        return appendEod;
    }

    public TokenizeTransformer setInputCol(String v) {
        set(inputCol, v);
        return this;
    }

    public TokenizeTransformer setOutputCol(String v) {
        set(outputCol, v);
        return this;
    }

    public TokenizeTransformer setTokenizer(String v) {
        set(tokenizer, v);
        return this;
    }

    public TokenizeTransformer setAppendEod(boolean v) {
        set(appendEod, (Object) v);
        return this;
    }

    @Override
    public StructType transformSchema(StructType schema) {
        String in = $(inputCol);
        String out = $(outputCol);
        if (!Arrays.asList(schema.fieldNames()).contains(in)) {
            throw new IllegalArgumentException("input column '" + in + "' not found; columns are "
                    + Arrays.toString(schema.fieldNames()));
        }
        if (!(schema.apply(in).dataType() instanceof StringType)) {
            throw new IllegalArgumentException("input column '" + in + "' must be a string, it is "
                    + schema.apply(in).dataType().simpleString());
        }
        if (Arrays.asList(schema.fieldNames()).contains(out)) {
            throw new IllegalArgumentException("output column '" + out + "' already exists");
        }
        return schema.add(new StructField(out, DataTypes.createArrayType(DataTypes.IntegerType, false), true,
                new org.apache.spark.sql.types.MetadataBuilder().putString(TOKENIZER_METADATA, $(tokenizer)).build()));
    }

    @Override
    public Dataset<Row> transform(Dataset<?> dataset) {
        StructType outSchema = transformSchema(dataset.schema());
        TokenizerSpec spec;
        try {
            spec = TokenizerSpec.parse($(tokenizer), null, SparkHadoop.confMap(dataset.sparkSession()));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        int textIndex = dataset.schema().fieldIndex($(inputCol));
        boolean eod = (Boolean) $(appendEod);
        String out = $(outputCol);
        // the Row encoder drops field metadata: put the tokenizer's name back on the output column
        return dataset.toDF().mapPartitions(new TokenizeRows(spec, textIndex, eod), Encoders.row(outSchema))
                .withMetadata(out, outSchema.apply(out).metadata());
    }

    @Override
    public TokenizeTransformer copy(ParamMap extra) {
        return defaultCopy(extra);
    }

    @Override
    public MLWriter write() {
        TokenizeTransformer self = this;
        MLWriter params = DefaultParamsWritable.super.write();
        return new MLWriter() {
            @Override
            public void saveImpl(String path) {
                StageIO.saveParams(params, sparkSession(), path);
                try {
                    ModelTokenizer.save(self.$(self.tokenizer), StageIO.child(path, "tokenizer"), StageIO.hadoopConf(sparkSession()));
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            }
        };
    }

    /** Spark ML's reader (found by {@code Pipeline}/{@code PipelineModel.load} through reflection). */
    public static MLReader<TokenizeTransformer> read() {
        return new MLReader<>() {
            @Override
            public TokenizeTransformer load(String path) {
                TokenizeTransformer t = StageIO.loadParams(sparkSession(), path);
                try {
                    String saved = ModelTokenizer.find(StageIO.child(path, "tokenizer"), StageIO.hadoopConf(sparkSession()));
                    if (saved != null) {
                        t.setTokenizer(saved);
                    }
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
                return t;
            }
        };
    }

    public static TokenizeTransformer load(String path) {
        return read().load(path);
    }
}
