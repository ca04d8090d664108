package org.sparkatron.spark;

import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.ml.Model;
import org.apache.spark.ml.param.DoubleParam;
import org.apache.spark.ml.param.IntParam;
import org.apache.spark.ml.param.LongParam;
import org.apache.spark.ml.param.Param;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.ml.util.DefaultParamsWritable;
import org.apache.spark.ml.util.Identifiable$;
import org.apache.spark.ml.util.MLReader;
import org.apache.spark.ml.util.MLWriter;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.sql.types.StructType;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;
import org.sparkatron.inference.Generator;
import org.sparkatron.inference.Sampling;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;

/**
 * A trained language model as a Spark ML Transformer. {@code transform(df)} adds {@code lossCol} (mean
 * next-token cross-entropy of the row's token ids, nats) and {@code perplexityCol} (exp of it) for the
 * array&lt;int&gt; {@code inputCol}; when {@code promptCol} is set it also adds {@code generatedCol}: the
 * continuation of up to {@code maxNewTokens} tokens for that prompt (greedy by default; {@code temperature},
 * {@code topK}, {@code topP} sample, seeded by {@code sampleSeed} and the prompt, so a row gives the same text on
 * every run). With a {@code tokenizer} (set by {@code fit} when the input column came from a
 * {@code TokenizeTransformer}) the prompt may be a string column, generation stops at the end-of-document
 * token, and {@code generatedTextCol} holds the decoded text. Rows too short to score (fewer than 2 tokens),
 * null, or holding ids outside the vocabulary get null rather than failing the job. Sequences longer than the
 * model's context are scored in consecutive windows.
 *
 * <p>The weights travel in the task closure (fine for the small models CPU scoring is for); each task
 * builds one model on the CPU with one BLAS thread.
 *
 * <p>Persistence: Spark ML's {@code MLWritable}/{@code MLReadable} ({@code model.write().save(path)},
 * {@code SparkatronModel.load(path)}, and inside a {@code PipelineModel}): {@code path/metadata} holds the
 * Params as Spark's own stages write them, {@code path/data} the model in the Hugging Face layout
 * ({@code config.json}, {@code model.safetensors}) with its tokenizer. {@link #load(String)} also reads a
 * plain Hugging Face model directory (a training {@code outputPath}). {@link #save(String, Configuration)}
 * writes the Hugging Face layout alone.
 */
public final class SparkatronModel extends Model<SparkatronModel> implements DefaultParamsWritable {
    private static final long serialVersionUID = 1L;
    private final String uid;
    private String configJson;
    private float[] weights;

    private final Param<String> inputCol;
    private final Param<String> lossCol;
    private final Param<String> perplexityCol;
    private final Param<String> promptCol;
    private final Param<String> generatedCol;
    private final IntParam maxNewTokens;
    private final Param<String> tokenizer;
    private final Param<String> generatedTextCol;
    private final DoubleParam temperature;
    private final IntParam topK;
    private final DoubleParam topP;
    private final LongParam sampleSeed;
    private transient List<String> trainingMetrics;

    public SparkatronModel(String uid) {
        this.uid = uid;
        // created after uid is set: a Param records its parent's uid
        inputCol = new Param<>(this, "inputCol", "array<int> column to score");
        lossCol = new Param<>(this, "lossCol", "output column: mean cross-entropy (nats)");
        perplexityCol = new Param<>(this, "perplexityCol", "output column: perplexity");
        promptCol = new Param<>(this, "promptCol", "array<int> column of prompts to continue (optional)");
        generatedCol = new Param<>(this, "generatedCol", "output column: generated token ids");
        maxNewTokens = new IntParam(this, "maxNewTokens", "tokens to generate per prompt (at most)");
        tokenizer = new Param<>(this, "tokenizer", "gpt2, or a path to a tokenizer.json: prompts may be text and generatedTextCol is added (optional)");
        generatedTextCol = new Param<>(this, "generatedTextCol", "output column: the generated text (needs tokenizer)");
        temperature = new DoubleParam(this, "temperature", "sampling temperature (0: greedy)");
        topK = new IntParam(this, "topK", "sample from the k most likely tokens (0: all)");
        topP = new DoubleParam(this, "topP", "sample from the smallest set of tokens whose probability reaches p (1: all)");
        sampleSeed = new LongParam(this, "sampleSeed", "sampling seed, combined with each prompt so a row's text does not depend on partitioning");
        setDefault(inputCol, "tokens");
        setDefault(generatedTextCol, "generatedText");
        setDefault(temperature, (Object) 0.0);
        setDefault(topK, (Object) 0);
        setDefault(topP, (Object) 1.0);
        setDefault(sampleSeed, (Object) 0L);
        setDefault(lossCol, "loss");
        setDefault(perplexityCol, "perplexity");
        setDefault(generatedCol, "generated");
        setDefault(maxNewTokens, (Object) 16);
    }

    /** A model Transformer holding a copy of {@code model}'s weights. */
    public static SparkatronModel of(Transformer model) {
        SparkatronModel m = new SparkatronModel(Identifiable$.MODULE$.randomUID("sparkatronModel"));
        m.configJson = model.config().toJson().toString();
        m.weights = new float[(int) model.params().numel()];
        model.params().weights().floats().get(0, m.weights);
        return m;
    }

    @Override
    public String uid() {
        return uid;
    }

    public Param<String> inputCol() { return inputCol; }
    public Param<String> lossCol() { return lossCol; }
    public Param<String> perplexityCol() { return perplexityCol; }
    public Param<String> promptCol() { return promptCol; }
    public Param<String> generatedCol() { return generatedCol; }
    public IntParam maxNewTokens() { return maxNewTokens; }

    public SparkatronModel setInputCol(String v) { set(inputCol, v); return this; }
    public SparkatronModel setLossCol(String v) { set(lossCol, v); return this; }
    public SparkatronModel setPerplexityCol(String v) { set(perplexityCol, v); return this; }
    public SparkatronModel setPromptCol(String v) { set(promptCol, v); return this; }
    public SparkatronModel setGeneratedCol(String v) { set(generatedCol, v); return this; }
    public SparkatronModel setMaxNewTokens(int v) { set(maxNewTokens, (Object) v); return this; }
    public Param<String> tokenizer() { return tokenizer; }
    public Param<String> generatedTextCol() { return generatedTextCol; }
    public DoubleParam temperature() { return temperature; }
    public IntParam topK() { return topK; }
    public DoubleParam topP() { return topP; }
    public LongParam sampleSeed() { return sampleSeed; }
    public SparkatronModel setTokenizer(String v) { set(tokenizer, v); return this; }
    public SparkatronModel setGeneratedTextCol(String v) { set(generatedTextCol, v); return this; }
    public SparkatronModel setTemperature(double v) { set(temperature, (Object) v); return this; }
    public SparkatronModel setTopK(int v) { set(topK, (Object) v); return this; }
    public SparkatronModel setTopP(double v) { set(topP, (Object) v); return this; }
    public SparkatronModel setSampleSeed(long v) { set(sampleSeed, (Object) v); return this; }

    /**
     * The per-step metrics of the fit that made this model (JSON lines: step, loss, lr, ...), or an empty
     * list for a loaded model (the training output's {@code metrics.jsonl} keeps them).
     */
    public List<String> trainingMetrics() {
        return trainingMetrics == null ? List.of() : trainingMetrics;
    }

    SparkatronModel setTrainingMetrics(List<String> metrics) {
        this.trainingMetrics = List.copyOf(metrics);
        return this;
    }

    /** The sampling these Params describe (refuses bad values). */
    public Sampling sampling() {
        // Number: values set through Py4J may arrive boxed as another numeric type
        return new Sampling(((Number) getOrDefault(temperature)).doubleValue(), ((Number) getOrDefault(topK)).intValue(),
                ((Number) getOrDefault(topP)).doubleValue());
    }

    public ModelConfig config() {
        try {
            return ModelConfig.fromJson(TrainConfig.JSON.readTree(configJson));
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** A fresh CPU model with these weights (one per thread: models are not thread-safe). */
    public Transformer newTransformer() {
        Transformer t = new Transformer(config(), new CpuDevice());
        t.params().uploadWeights(weights);
        return t;
    }

    @Override
    public StructType transformSchema(StructType schema) {
        requireIntArray(schema, getOrDefault(inputCol));
        StructType out = schema.add(getOrDefault(lossCol), DataTypes.DoubleType, true)
                .add(getOrDefault(perplexityCol), DataTypes.DoubleType, true);
        if (isDefined(promptCol)) {
            String p = getOrDefault(promptCol);
            if (!(isDefined(tokenizer) && Arrays.asList(schema.fieldNames()).contains(p)
                    && schema.apply(p).dataType() instanceof StringType)) {
                if (!isDefined(tokenizer) && Arrays.asList(schema.fieldNames()).contains(p)
                        && schema.apply(p).dataType() instanceof StringType) {
                    throw new IllegalArgumentException("prompt column '" + p + "' is a string column: set tokenizer (gpt2 or a tokenizer.json path) to use text prompts");
                }
                requireIntArray(schema, p);
            }
            out = out.add(getOrDefault(generatedCol), DataTypes.createArrayType(DataTypes.IntegerType, false), true);
            if (isDefined(tokenizer)) {
                out = out.add(getOrDefault(generatedTextCol), DataTypes.StringType, true);
            }
        }
        sampling();
        return out;
    }

    private static void requireIntArray(StructType schema, String col) {
        for (StructField f : schema.fields()) {
            if (f.name().equals(col)) {
                if (f.dataType() instanceof ArrayType at && at.elementType().equals(DataTypes.IntegerType)) {
                    return;
                }
                throw new IllegalArgumentException("column '" + col + "' has type " + f.dataType().simpleString() + "; expected array<int>");
            }
        }
        throw new IllegalArgumentException("column '" + col + "' not found; columns: " + String.join(", ", schema.fieldNames()));
    }

    @Override
    public Dataset<Row> transform(Dataset<?> dataset) {
        StructType in = dataset.schema();
        StructType out = transformSchema(in);
        int inIdx = in.fieldIndex(getOrDefault(inputCol));
        int promptIdx = isDefined(promptCol) ? in.fieldIndex(getOrDefault(promptCol)) : -1;
        boolean textPrompt = promptIdx >= 0 && in.fields()[promptIdx].dataType() instanceof StringType;
        int newTokens = ((Number) getOrDefault(maxNewTokens)).intValue();
        Sampling sampling = sampling();
        long baseSeed = ((Number) getOrDefault(sampleSeed)).longValue();
        TokenizerSpec spec = isDefined(tokenizer) ? tokenizerSpec(getOrDefault(tokenizer), dataset.sparkSession()) : null;
        String cfg = configJson;
        float[] w = weights;
        MapPartitionsFunction<Row, Row> fn = rows -> {
            Blas.setThreads(1);
            Transformer model = new Transformer(ModelConfig.fromJson(TrainConfig.JSON.readTree(cfg)), new CpuDevice());
            model.params().uploadWeights(w);
            List<Row> result = new ArrayList<>();
            try (TextTokenizer tok = spec == null ? null : spec.create()) {
                while (rows.hasNext()) {
                    Row r = rows.next();
                    Object[] vals = new Object[out.size()];
                    for (int i = 0; i < r.size(); i++) {
                        vals[i] = r.get(i);
                    }
                    Double loss = score(model, ids(r, inIdx));
                    vals[r.size()] = loss;
                    vals[r.size() + 1] = loss == null ? null : Math.exp(loss);
                    if (promptIdx >= 0) {
                        int[] prompt = textPrompt ? (r.isNullAt(promptIdx) ? null : tok.encode(r.getString(promptIdx))) : ids(r, promptIdx);
                        int[] gen = null;
                        if (prompt != null && prompt.length > 0 && inVocab(prompt, model.config().vocabSize())) {
                            gen = Generator.generate(model, prompt, newTokens, sampling, baseSeed * 31 + Arrays.hashCode(prompt),
                                    tok == null ? -1 : tok.eodId());
                        }
                        vals[r.size() + 2] = gen == null ? null : new scala.collection.immutable.ArraySeq.ofInt(gen);
                        if (tok != null) {
                            vals[r.size() + 3] = gen == null ? null : tok.decode(gen);
                        }
                    }
                    result.add(RowFactory.create(vals));
                }
            }
            return result.iterator();
        };
        return dataset.toDF().mapPartitions(fn, Encoders.row(out));
    }

    private static boolean inVocab(int[] ids, int vocab) {
        for (int id : ids) {
            if (id < 0 || id >= vocab) {
                return false;
            }
        }
        return true;
    }

    static TokenizerSpec tokenizerSpec(String arg, org.apache.spark.sql.SparkSession spark) {
        try {
            return TokenizerSpec.parse(arg, null, org.sparkatron.data.spark.StageIO.hadoopConf(spark));
        } catch (IOException e) {
            throw new IllegalArgumentException(e.getMessage(), e);
        }
    }

    /**
     * The ids of an array column, whatever external form Spark hands the Row: a Scala Seq after its own
     * deserializer, but the producing stage's raw value (an {@code int[]}, a Java list, a boxed array) when
     * the optimizer removed the serialize/deserialize pair between two Row-to-Row stages. Null for a null
     * array or a null element; an id outside the int range becomes -1 (outside every vocabulary).
     */
    static int[] ids(Row r, int idx) {
        if (r.isNullAt(idx)) {
            return null;
        }
        Object v = r.get(idx);
        if (v instanceof int[] a) {
            return a.clone();
        }
        List<?> l;
        if (v instanceof scala.collection.Seq<?> s) {
            l = scala.jdk.javaapi.CollectionConverters.asJava(s);
        } else if (v instanceof List<?> jl) {
            l = jl;
        } else if (v instanceof Object[] oa) {
            l = java.util.Arrays.asList(oa);
        } else if (v instanceof long[] la) {
            l = java.util.Arrays.stream(la).boxed().toList();
        } else {
            throw new IllegalArgumentException("unsupported value for an array<int> column: " + v.getClass().getName());
        }
        int[] a = new int[l.size()];
        for (int i = 0; i < a.length; i++) {
            Object e = l.get(i);
            if (e == null) {
                return null;
            }
            long id = ((Number) e).longValue();
            a[i] = id < 0 || id > Integer.MAX_VALUE ? -1 : (int) id;
        }
        return a;
    }

    /** Mean next-token loss over consecutive windows of at most maxPositions predictions; null if unscorable. */
    public static Double score(Transformer model, int[] ids) {
        if (ids == null || ids.length < 2) {
            return null;
        }
        int vocab = model.config().vocabSize();
        for (int id : ids) {
            if (id < 0 || id >= vocab) {
                return null;
            }
        }
        int ctx = model.config().maxPositions();
        double sum = 0;
        int count = 0;
        for (int start = 0; start < ids.length - 1; start += ctx) {
            int t = Math.min(ctx, ids.length - 1 - start);
            int[] window = java.util.Arrays.copyOfRange(ids, start, start + t + 1);
            sum += model.loss(window, 1, t, null) * t;
            count += t;
        }
        return sum / count;
    }

    /** Greedy decoding: the arg-max next token, {@code n} times, over the last maxPositions tokens. */
    public static int[] generate(Transformer model, int[] prompt, int n) {
        return Generator.generate(model, prompt, n, Sampling.greedy(), 0, -1);
    }

    @Override
    public SparkatronModel copy(ParamMap extra) {
        SparkatronModel m = new SparkatronModel(uid);
        m.configJson = configJson;
        m.weights = weights;
        m.trainingMetrics = trainingMetrics;
        return copyValues(m, extra).setParent(parent());
    }

    @Override
    public MLWriter write() {
        SparkatronModel self = this;
        MLWriter params = DefaultParamsWritable.super.write();
        return new MLWriter() {
            @Override
            public void saveImpl(String path) {
                org.sparkatron.data.spark.StageIO.saveParams(params, sparkSession(), path);
                String data = org.sparkatron.data.spark.StageIO.child(path, "data");
                try {
                    self.save(data, sparkSession().sparkContext().hadoopConfiguration());
                    if (self.isDefined(self.tokenizer)) {
                        org.sparkatron.data.tokenizer.ModelTokenizer.save(self.getOrDefault(self.tokenizer), data,
                                org.sparkatron.data.spark.StageIO.hadoopConf(sparkSession()));
                    }
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            }
        };
    }

    /**
     * Spark ML's reader (found by {@code PipelineModel.load} through reflection): a saved stage
     * ({@code path/metadata} + {@code path/data}), or a Hugging Face model directory with default Params.
     * Either way the tokenizer saved with the weights, if any, becomes the {@code tokenizer} Param.
     */
    public static MLReader<SparkatronModel> read() {
        return new MLReader<>() {
            @Override
            public SparkatronModel load(String path) {
                Configuration conf = sparkSession().sparkContext().hadoopConfiguration();
                Map<String, String> confMap = org.sparkatron.data.spark.StageIO.hadoopConf(sparkSession());
                try {
                    SparkatronModel m;
                    String data;
                    if (org.sparkatron.data.io.DataPaths.exists(org.sparkatron.data.spark.StageIO.child(path, "metadata"), confMap)) {
                        data = org.sparkatron.data.spark.StageIO.child(path, "data");
                        m = org.sparkatron.data.spark.StageIO.loadParams(sparkSession(), path);
                        SparkatronModel weights = SparkatronModel.load(data, conf);
                        m.configJson = weights.configJson;
                        m.weights = weights.weights;
                    } else {
                        data = path;
                        m = SparkatronModel.load(path, conf);
                    }
                    String tok = org.sparkatron.data.tokenizer.ModelTokenizer.find(data, confMap);
                    if (tok != null) {
                        m.setTokenizer(tok);
                    }
                    return m;
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            }
        };
    }

    /** {@code read().load(path)}: a saved stage or a Hugging Face model directory, on any Hadoop path. */
    public static SparkatronModel load(String path) {
        return read().load(path);
    }

    /**
     * Saves config.json + model.safetensors (Hugging Face layout) under {@code path} on its FileSystem:
     * written under {@code path/_temporary/} and moved into place at the end ({@link OutputCommit}), so a
     * failed save leaves a model already there untouched.
     */
    public void save(String path, Configuration hadoopConf) throws IOException {
        OutputCommit commit = OutputCommit.begin(path, hadoopConf);
        try {
            writeFiles(commit.staging(), hadoopConf);
            commit.commit();
        } finally {
            commit.abort();
        }
    }

    /** Writes config.json + model.safetensors into {@code path} directly (a staging directory). */
    void writeFiles(String path, Configuration hadoopConf) throws IOException {
        org.apache.hadoop.fs.Path out = new org.apache.hadoop.fs.Path(path);
        FileSystem fs = out.getFileSystem(hadoopConf);
        fs.mkdirs(out);
        java.nio.file.Path tmp = Files.createTempDirectory("sparkatron-model");
        try {
            ModelStore.save(newTransformer(), tmp);
            for (String f : new String[] {ModelStore.CONFIG, ModelStore.WEIGHTS}) {
                fs.copyFromLocalFile(false, true, new org.apache.hadoop.fs.Path(tmp.resolve(f).toUri()), new org.apache.hadoop.fs.Path(out, f));
            }
        } finally {
            deleteTree(tmp);
        }
    }

    /** Loads a model directory in the Hugging Face layout from any Hadoop FileSystem path. */
    public static SparkatronModel load(String path, Configuration hadoopConf) throws IOException {
        org.apache.hadoop.fs.Path dir = new org.apache.hadoop.fs.Path(path);
        FileSystem fs = dir.getFileSystem(hadoopConf);
        java.nio.file.Path tmp = Files.createTempDirectory("sparkatron-model");
        try {
            for (String f : new String[] {ModelStore.CONFIG, ModelStore.WEIGHTS}) {
                org.apache.hadoop.fs.Path src = new org.apache.hadoop.fs.Path(dir, f);
                if (!fs.exists(src)) {
                    throw new IllegalArgumentException(path + " is not a model directory: " + f + " is missing");
                }
                fs.copyToLocalFile(false, src, new org.apache.hadoop.fs.Path(tmp.resolve(f).toUri()), true);
            }
            return of(ModelStore.load(tmp, new CpuDevice()));
        } finally {
            deleteTree(tmp);
        }
    }

    static void deleteTree(java.nio.file.Path dir) throws IOException {
        try (var s = Files.walk(dir)) {
            for (Iterator<java.nio.file.Path> it = s.sorted(Comparator.reverseOrder()).iterator(); it.hasNext(); ) {
                Files.deleteIfExists(it.next());
            }
        }
    }
}
