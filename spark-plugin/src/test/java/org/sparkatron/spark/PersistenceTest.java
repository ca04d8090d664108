package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineModel;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.ml.param.Param;
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

/**
 * Spark ML persistence of the three stages through {@code Pipeline} and {@code PipelineModel} (Spark's own
 * save and load), and the Estimator's Params against the training config's keys.
 */
@Timeout(300)
class PersistenceTest {
    @TempDir
    Path tmp;

    @Test
    void everyTrainingKeyIsAParamWithADocOrHasAReason() {
        SparkatronEstimator e = new SparkatronEstimator();
        List<String> keys = new ArrayList<>();
        for (Param<?> p : e.params()) {
            assertFalse(p.doc().isBlank(), p.name() + " has no doc");
            keys.add(SparkatronEstimator.configKey(p.name()));
        }
        for (String k : TrainConfig.KEYS) {
            assertTrue(keys.contains(k) || SparkatronEstimator.NOT_PARAMS.containsKey(k), "key '" + k + "' is neither a Param nor excused");
            assertFalse(keys.contains(k) && SparkatronEstimator.NOT_PARAMS.containsKey(k), "key '" + k + "' is both");
        }
        for (String k : keys) {
            assertTrue(TrainConfig.KEYS.contains(k), "Param for unknown key " + k);
        }
        String explained = e.explainParams();
        for (String name : new String[] {"checkpointDir", "precision", "bucketMb", "threadsPerRank", "commTimeoutS", "tokenizer"}) {
            assertTrue(explained.contains(name + ":"), name + " missing from explainParams");
        }
        TrainConfig c = e.setModelConfig(SharedSpark.tinyModel().toString()).setCheckpointDir("/ck").setCheckpointEvery(5)
                .setKeepCheckpoints(3).setStartOver(true).setPrecision("bf16").setBucketMb(0.5).setThreadsPerRank(2)
                .setCommTimeoutS(30).setTokenizer("gpt2").toConfig();
        assertEquals("/ck", c.checkpointDir);
        assertEquals(5, c.checkpointEvery);
        assertEquals(3, c.keepCheckpoints);
        assertTrue(c.startOver);
        assertEquals("BF16", c.precision.name());
        assertEquals(1 << 19, c.bucketBytes);
        assertEquals(2, c.threadsPerRank);
        assertEquals(30_000, c.commTimeoutMs);
        assertEquals("gpt2", c.tokenizer);
    }

    static Dataset<Row> texts(SparkSession spark, String... texts) {
        List<Row> rows = new ArrayList<>();
        for (String t : texts) {
            rows.add(RowFactory.create(t, t.substring(0, t.indexOf(' '))));
        }
        return spark.createDataFrame(rows, new StructType().add("text", DataTypes.StringType).add("prompt", DataTypes.StringType));
    }

    @Test
    void pipelineAndPipelineModelRoundTrip() throws Exception {
        SparkSession spark = SharedSpark.get();
        Path tokenizer = tmp.resolve("my-tokenizer.json");
        Files.copy(Path.of(TransformInputsTest.TOKENIZER), tokenizer);
        TokenizeTransformer tok = new TokenizeTransformer().setTokenizer(tokenizer.toString());
        SparkatronEstimator est = new SparkatronEstimator()
                .setModelConfig(SharedSpark.tinyModel().put("vocab_size", 320).toString())
                .setDp(1).setGlobalBatch(4).setSeqLen(8).setSteps(3).setLr(1e-2).setSeed(3).setCommTimeoutS(60)
                .setPrecision("fp32").setProgress(null);
        Pipeline pipeline = new Pipeline().setStages(new PipelineStage[] {tok, est});
        String pipePath = tmp.resolve("pipeline").toString();
        pipeline.write().save(pipePath);
        Pipeline loadedPipe = Pipeline.load(pipePath);
        SparkatronEstimator loadedEst = (SparkatronEstimator) loadedPipe.getStages()[1];
        assertEquals(est.uid(), loadedEst.uid());
        assertEquals(est.toConfig().toString(), loadedEst.toConfig().toString(), "the Estimator's Params survive");

        Dataset<Row> df = texts(spark, "the cat sat on the mat", "the dog sat on the log", "a cat and a dog met",
                "the mat and the log", "on the mat the cat sat");
        PipelineModel fitted = loadedPipe.fit(df);
        SparkatronModel model = (SparkatronModel) fitted.stages()[1];
        TokenizeTransformer loadedTok = (TokenizeTransformer) loadedPipe.getStages()[0];
        assertTrue(loadedTok.getOrDefault(loadedTok.tokenizer()).startsWith(pipePath), "the loaded stage reads its saved copy");
        assertEquals(loadedTok.getOrDefault(loadedTok.tokenizer()), model.getOrDefault(model.tokenizer()),
                "fit takes the tokenizer from the column metadata");
        model.setPromptCol("prompt").setMaxNewTokens(5).setTemperature(0.8).setTopK(20).setSampleSeed(9);
        List<Row> before = fitted.transform(df).orderBy("text").collectAsList();

        String modelPath = tmp.resolve("fitted").toString();
        fitted.write().save(modelPath);
        Files.delete(tokenizer); // the saved pipeline must not need the original tokenizer file
        PipelineModel loaded = PipelineModel.load(modelPath);
        SparkatronModel loadedModel = (SparkatronModel) loaded.stages()[1];
        assertEquals(model.uid(), loadedModel.uid());
        assertTrue(loadedModel.getOrDefault(loadedModel.tokenizer()).startsWith(modelPath), "the tokenizer is the saved copy");
        assertEquals(0.8, loadedModel.getOrDefault(loadedModel.temperature()));
        List<Row> after = loaded.transform(df).orderBy("text").collectAsList();
        assertEquals(before.size(), after.size());
        for (int i = 0; i < before.size(); i++) {
            Row b = before.get(i);
            Row a = after.get(i);
            assertNotNull(b.getAs("loss"));
            assertEquals(b.<Double>getAs("loss"), a.<Double>getAs("loss"), 0.0, "same weights, same loss");
            assertEquals(b.<String>getAs("generatedText"), a.<String>getAs("generatedText"), "seeded sampling, same text");
            assertEquals(b.getAs("tokens").toString(), a.getAs("tokens").toString());
        }
        // the model's data directory is a Hugging Face model directory with its tokenizer
        assertTrue(Files.exists(Path.of(modelPath, "stages").toFile().listFiles()[0].toPath()));
        SparkatronModel hf = SparkatronModel.load(Path.of(modelPath, "stages").toFile().listFiles((d, n) -> n.startsWith("1_"))[0]
                .toPath().resolve("data").toString());
        assertNotNull(hf.getOrDefault(hf.tokenizer()), "a Hugging Face directory loads with its tokenizer");
    }
}
