package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDatasetWriter;
import org.sparkatron.model.Transformer;
import org.sparkatron.train.SampleSource;

/**
 * Seeing a job: evaluation on the validation split of a Megatron dataset (the same figure on one rank and on
 * two data-parallel ranks, and equal to scoring the same validation samples with the trained model), one
 * console line per log interval and per evaluation, the closing summary, {@code metrics.jsonl} with steps
 * and evaluations, the loss plot, {@code train_config.json} and TensorBoard events.
 */
class MonitoringSparkTest {
    @TempDir
    Path tmp;

    private String dataset() throws Exception {
        String prefix = tmp.resolve("walks").toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.UINT16)) {
            for (int[] d : SyntheticData.walks(200, 21)) {
                w.addDocument(d);
            }
        }
        return prefix;
    }


    @Test
    @Timeout(300)
    void validationIntervalsPlotAndTensorBoard() throws Exception {
        String input = dataset();
        TrainConfig base = SharedSpark.config(1, 8, 12).with("input_format", "megatron").with("input", input)
                .with("data_split", "\"80,20,0\"").with("log_interval", "4").with("eval_interval", "6").with("eval_iters", "2");
        Path out = tmp.resolve("out");
        Path tb = tmp.resolve("tb");
        ByteArrayOutputStream console = new ByteArrayOutputStream();
        DistributedTraining.Result two = DistributedTraining.runMegatron(SharedSpark.get(), base.with("dp", "2")
                .with("output", out.toString()).with("tensorboard_dir", tb.toString()), new PrintStream(console, true, StandardCharsets.UTF_8));
        String text = console.toString(StandardCharsets.UTF_8);
        System.out.print(text);
        DistributedTraining.Result one = DistributedTraining.runMegatron(SharedSpark.get(), base, null);

        // evaluations at steps 6 and 12 (the last step), the same on one rank and two replicas
        assertEquals(2, two.evaluations().size(), two.evaluations().toString());
        for (int i = 0; i < 2; i++) {
            JsonNode a = DistributedTraining.metric(one.evaluations().get(i));
            JsonNode b = DistributedTraining.metric(two.evaluations().get(i));
            assertEquals(6 * (i + 1), b.path("step").asInt());
            assertEquals(16, b.path("eval_samples").asInt(), "eval_iters 2 x global batch 8");
            // same samples and weights; the means summed in another order and all-reduced in float: 1e-5
            assertEquals(a.path("valid_loss").asDouble(), b.path("valid_loss").asDouble(), 1e-5, "evaluation " + i);
            assertEquals(Math.exp(b.path("valid_loss").asDouble()), b.path("valid_ppl").asDouble(), 1e-4 * b.path("valid_ppl").asDouble());
        }
        // the last evaluation scored validation samples 16..31 (the first evaluation read 0..15) with the final weights
        Transformer trained = one.model();
        double sum = 0;
        try (SampleSource valid = MegatronInput.validSource(base, new HashMap<>(), 0)) {
            valid.skip(16);
            int[] batch = new int[8 * 17];
            for (int it = 0; it < 2; it++) {
                for (int s = 0; s < 8; s++) {
                    assertTrue(valid.next(batch, s * 17));
                }
                sum += trained.loss(batch, 8, 16, null);
            }
        }
        // metrics lines print the loss with 6 decimals
        assertEquals(sum / 2, DistributedTraining.metric(one.evaluations().get(1)).path("valid_loss").asDouble(), 1e-6);

        // console: one line per interval (steps 4, 8, 12) and per evaluation, then the summary
        assertEquals(3, text.lines().filter(l -> l.matches("\\[sparkatron\\] step +\\d+/12 \\| loss .*MFU .*")).count(), text);
        assertEquals(2, text.lines().filter(l -> l.startsWith("[sparkatron] validation at step")).count(), text);
        assertTrue(two.summary().get(1).startsWith("training loss (mean of a log interval): ") && two.summary().get(1).contains("at steps 1-4 ->")
                && two.summary().get(1).contains("at steps 9-12"), two.summary().toString());
        assertTrue(two.summary().get(2).startsWith("validation loss: "), two.summary().toString());

        // metrics.jsonl: steps 1..12 and evaluations after steps 6 and 12
        List<JsonNode> m = SharedSpark.jsonLines(out.resolve(MetricsLog.FILE));
        assertEquals(14, m.size());
        assertEquals("eval", m.get(6).path("kind").asText());
        assertEquals(6, m.get(6).path("step").asInt());
        assertEquals(12, m.get(12).path("step").asInt());
        assertEquals("eval", m.get(13).path("kind").asText());
        String svg = Files.readString(out.resolve(TrainingMonitor.PLOT));
        assertTrue(svg.contains("data-series=\"train-step\" data-points=\"12\"") && svg.contains("data-series=\"valid\" data-points=\"2\"")
                && svg.contains("data-series=\"train-interval\" data-points=\"3\""), svg);
        JsonNode saved = TrainConfig.JSON.readTree(out.resolve(DistributedTraining.TRAIN_CONFIG_FILE).toFile());
        assertEquals(12, saved.path("config").path("steps").asInt());
        assertEquals(12, saved.path("config").path("decay_steps").asInt(), "resolved: the default decay_steps is written out");
        assertTrue(saved.path("data").asText().contains("validation samples"), saved.toString());
        try (var files = Files.list(tb)) {
            List<Path> events = files.toList();
            assertEquals(1, events.size());
            assertTrue(events.get(0).getFileName().toString().startsWith("events.out.tfevents."));
            assertTrue(Files.size(events.get(0)) > 12 * 3 * 40, "per-step, interval and evaluation scalars");
        }
    }

    /** The documents as rows in list order (a local relation keeps it; SyntheticData.frame repartitions). */
    private static org.apache.spark.sql.Dataset<org.apache.spark.sql.Row> inOrder(List<int[]> docs) {
        List<org.apache.spark.sql.Row> rows = new ArrayList<>();
        for (int[] d : docs) {
            rows.add(org.apache.spark.sql.RowFactory.create((Object) java.util.Arrays.stream(d).boxed().toArray(Integer[]::new)));
        }
        return SharedSpark.get().createDataFrame(rows, new org.apache.spark.sql.types.StructType().add("tokens",
                org.apache.spark.sql.types.DataTypes.createArrayType(org.apache.spark.sql.types.DataTypes.IntegerType)));
    }

    @Test
    @Timeout(300)
    void dataFrameInputIsSplitByDocumentsAndEvaluatedInOrder() throws Exception {
        List<int[]> docs = SyntheticData.walks(100, 9);
        TrainConfig base = SharedSpark.config(1, 4, 6).with("data_split", "\"90,10,0\"").with("eval_interval", "3").with("eval_iters", "1");
        DistributedTraining.Result one = DistributedTraining.run(inOrder(docs), base, null);
        DistributedTraining.Result two = DistributedTraining.run(inOrder(docs), base.with("dp", "2"), null);
        assertEquals(2, one.evaluations().size());
        for (int i = 0; i < 2; i++) {
            assertEquals(DistributedTraining.metric(one.evaluations().get(i)).path("valid_loss").asDouble(),
                    DistributedTraining.metric(two.evaluations().get(i)).path("valid_loss").asDouble(), 1e-5, "evaluation " + i);
        }
        // validation = documents 90..99 packed into samples of 17 tokens, ordered by the seeded permutation; the
        // evaluation after step 6 (the second) read positions 4..7 of that order
        List<Integer> stream = new ArrayList<>();
        for (int[] d : docs.subList(90, 100)) {
            for (int x : d) {
                stream.add(x);
            }
        }
        int n = (stream.size() - 1) / 16;
        int[] order = TokenData.permutation(n, base.seed + 1, 0);
        int[] batch = new int[4 * 17];
        for (int k = 0; k < 4; k++) {
            int sample = order[4 + k];
            for (int j = 0; j < 17; j++) {
                batch[k * 17 + j] = stream.get(sample * 16 + j);
            }
        }
        assertEquals(one.model().loss(batch, 4, 16, null), DistributedTraining.metric(one.evaluations().get(1)).path("valid_loss").asDouble(),
                1e-6, "the trained model on the same validation samples (metrics print 6 decimals)");
    }

    @Test
    @Timeout(300)
    void evalIntervalWithoutAValidationSplitIsRefused() throws Exception {
        String input = dataset();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.runMegatron(SharedSpark.get(),
                SharedSpark.config(1, 8, 4).with("input_format", "megatron").with("input", input).with("eval_interval", "2"), null));
        assertTrue(e.getMessage().contains("leaves no validation documents"), e.getMessage());
        IllegalArgumentException df = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.run(
                SyntheticData.frame(SharedSpark.get(), SyntheticData.walks(20, 1), "tokens", 2), SharedSpark.config(1, 4, 4)
                        .with("eval_interval", "2"), null));
        assertTrue(df.getMessage().contains("leaves no validation documents"), df.getMessage());
    }
}
