package org.sparkatron.spark;

import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Iterator;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.ml.Model;
import org.apache.spark.ml.param.IntParam;
import org.apache.spark.ml.param.Param;
import org.apache.spark.ml.param.ParamMap;
import org.apache.spark.ml.util.Identifiable$;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;

/**
 * A trained language model as a Spark ML Transformer. {@code transform(df)} adds {@code lossCol} (mean
 * next-token cross-entropy of the row's token ids, nats) and {@code perplexityCol} (exp of it) for the
 * array&lt;int&gt; {@code inputCol}; when {@code promptCol} is set it also adds {@code generatedCol}: the
 * greedy continuation of {@code maxNewTokens} tokens for that prompt. Rows too short to score (fewer than
 * 2 tokens), null, or holding ids outside the vocabulary get null rather than failing the job.
 * Sequences longer than the model's context are scored in consecutive windows.
 *
 * <p>The weights travel in the task closure (fine for the small models CPU scoring is for); each task
 * builds one model on the CPU with one BLAS thread. Save and load in the Hugging Face layout on any Hadoop
 * FileSystem path.
 */
public final class SparkatronModel extends Model<SparkatronModel> {
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

    public SparkatronModel(String uid) {
        this.uid = uid;
        // created after uid is set: a Param records its parent's uid
        inputCol = new Param<>(this, "inputCol", "array<int> column to score");
        lossCol = new Param<>(this, "lossCol", "output column: mean cross-entropy (nats)");
        perplexityCol = new Param<>(this, "perplexityCol", "output column: perplexity");
        promptCol = new Param<>(this, "promptCol", "array<int> column of prompts to continue (optional)");
        generatedCol = new Param<>(this, "generatedCol", "output column: generated token ids");
        maxNewTokens = new IntParam(this, "maxNewTokens", "tokens to generate per prompt");
        setDefault(inputCol, "tokens");
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
            requireIntArray(schema, getOrDefault(promptCol));
            out = out.add(getOrDefault(generatedCol), DataTypes.createArrayType(DataTypes.IntegerType, false), true);
        }
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
        int newTokens = (Integer) getOrDefault(maxNewTokens);
        String cfg = configJson;
        float[] w = weights;
        MapPartitionsFunction<Row, Row> fn = rows -> {
            Blas.setThreads(1);
            Transformer model = new Transformer(ModelConfig.fromJson(TrainConfig.JSON.readTree(cfg)), new CpuDevice());
            model.params().uploadWeights(w);
            List<Row> result = new ArrayList<>();
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
                    int[] prompt = ids(r, promptIdx);
                    vals[r.size() + 2] = prompt == null || prompt.length == 0 ? null : toList(generate(model, prompt, newTokens));
                }
                result.add(RowFactory.create(vals));
            }
            return result.iterator();
        };
        return dataset.toDF().mapPartitions(fn, Encoders.row(out));
    }

    private static int[] ids(Row r, int idx) {
        if (r.isNullAt(idx)) {
            return null;
        }
        List<Integer> l = r.getList(idx);
        int[] a = new int[l.size()];
        for (int i = 0; i < a.length; i++) {
            if (l.get(i) == null) {
                return null;
            }
            a[i] = l.get(i);
        }
        return a;
    }

    private static Integer[] toList(int[] a) {
        Integer[] l = new Integer[a.length];
        for (int i = 0; i < a.length; i++) {
            l[i] = a[i];
        }
        return l;
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
        int vocab = model.config().vocabSize();
        int ctx = model.config().maxPositions();
        int[] seq = java.util.Arrays.copyOf(prompt, prompt.length + n);
        for (int id : prompt) {
            if (id < 0 || id >= vocab) {
                throw new IllegalArgumentException("prompt token id " + id + " is outside the vocabulary [0, " + vocab + ")");
            }
        }
        for (int k = 0; k < n; k++) {
            int len = prompt.length + k;
            int t = Math.min(ctx, len);
            int[] window = new int[t + 1]; // the last slot is a dummy target, unused by logits
            System.arraycopy(seq, len - t, window, 0, t);
            float[] logits = model.logits(window, 1, t);
            int best = 0;
            int base = (t - 1) * vocab;
            for (int v = 1; v < vocab; v++) {
                if (logits[base + v] > logits[base + best]) {
                    best = v;
                }
            }
            seq[len] = best;
        }
        return java.util.Arrays.copyOfRange(seq, prompt.length, seq.length);
    }

    @Override
    public SparkatronModel copy(ParamMap extra) {
        SparkatronModel m = new SparkatronModel(uid);
        m.configJson = configJson;
        m.weights = weights;
        return copyValues(m, extra).setParent(parent());
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
