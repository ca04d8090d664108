package org.sparkatron.train.track;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link MlflowTracking} against a real MLflow tracking server (the pinned {@code mlflow} package, started
 * here): the experiment is created once and found the second time, params, the full metric history and
 * artifacts come back through MLflow's own API, and the run ends FINISHED. An unreachable server is a clear
 * error at start.
 */
class MlflowTrackingTest {
    @TempDir
    Path tmp;

    @Test
    @Timeout(480)
    void paramsMetricsAndArtifactsReachARealServer() throws Exception {
        String why = PythonTool.missing("mlflow");
        assumeTrue(why == null, why);
        try (MlflowServer server = new MlflowServer(tmp)) {
            String runId;
            byte[] model = new byte[300_000];
            new java.util.Random(1).nextBytes(model);
            try (MlflowTracking t = new MlflowTracking(server.uri, "sparkatron-test", "run-a", Map.of("sparkatron.dp", "2"))) {
                runId = t.runId();
                Map<String, String> params = new LinkedHashMap<>();
                for (int i = 0; i < 130; i++) { // more than one log-batch request
                    params.put("p" + i, "v" + i);
                }
                params.put("train_config", "x".repeat(7000)); // longer than MLflow allows: cut
                t.logParams(params);
                for (int s = 10; s <= 50; s += 10) {
                    t.logMetrics(s, Map.of("train/loss", 5.0 / s, "mfu", 0.01 * s, "nan", Double.NaN));
                }
                t.logArtifact("model/model.safetensors", model.length, () -> new ByteArrayInputStream(model));
                byte[] text = "{\"step\": 1}\n".getBytes(StandardCharsets.UTF_8);
                t.logArtifact("metrics.jsonl", text.length, () -> new ByteArrayInputStream(text));
                t.end(true);
            }
            JsonNode run = server.get("mlflow/runs/get?run_id=" + runId).path("run");
            assertEquals("FINISHED", run.path("info").path("status").asText());
            assertEquals("run-a", run.path("info").path("run_name").asText());
            Map<String, String> params = new LinkedHashMap<>();
            run.path("data").path("params").forEach(p -> params.put(p.path("key").asText(), p.path("value").asText()));
            assertEquals(131, params.size());
            assertEquals("v129", params.get("p129"));
            assertTrue(params.get("train_config").endsWith("...[cut]") && params.get("train_config").length() == 6000);
            JsonNode history = server.get("mlflow/metrics/get-history?run_id=" + runId + "&metric_key=train/loss").path("metrics");
            assertEquals(5, history.size());
            for (int i = 0; i < 5; i++) {
                assertEquals(10 * (i + 1), history.get(i).path("step").asLong());
                assertEquals(5.0 / (10 * (i + 1)), history.get(i).path("value").asDouble(), 1e-12);
            }
            assertTrue(server.get("mlflow/metrics/get-history?run_id=" + runId + "&metric_key=nan").path("metrics").isEmpty(),
                    "non-finite values are not logged");
            assertArrayEquals(model, server.artifact(runId, "model/model.safetensors"));
            assertEquals("{\"step\": 1}\n", new String(server.artifact(runId, "metrics.jsonl"), StandardCharsets.UTF_8));
            try (MlflowTracking again = new MlflowTracking(server.uri, "sparkatron-test", "run-b", Map.of())) {
                assertEquals(server.get("mlflow/runs/get?run_id=" + runId).path("run").path("info").path("experiment_id").asText(),
                        again.experimentId(), "the experiment is found by name, not created twice");
            } // closed without end(true): FAILED
        }
    }

    @Test
    void anUnreachableServerIsAClearErrorAtStart() throws Exception {
        int port;
        try (java.net.ServerSocket s = new java.net.ServerSocket(0)) {
            port = s.getLocalPort();
        }
        IOException e = assertThrows(IOException.class, () -> new MlflowTracking("http://127.0.0.1:" + port, "x", "y", Map.of()));
        assertTrue(e.getMessage().contains("cannot reach the MLflow tracking server http://127.0.0.1:" + port), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> new MlflowTracking("file:///tmp/mlruns", "x", "y", Map.of()));
    }
}
