package org.sparkatron.train.track;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;
import java.util.Map;
import java.util.function.Supplier;

/**
 * One MLflow run through MLflow's REST API (no MLflow client library): finds or creates the experiment,
 * creates the run, logs params and metrics ({@code runs/log-batch}), uploads artifacts through the tracking
 * server's artifact proxy ({@code mlflow-artifacts:/} runs, the default of {@code mlflow server}) or into a
 * {@code file:} artifact root, and ends the run. Credentials as MLflow's own client reads them:
 * {@code MLFLOW_TRACKING_TOKEN} (bearer) or {@code MLFLOW_TRACKING_USERNAME}/{@code MLFLOW_TRACKING_PASSWORD}.
 *
 * <p>Threads: all methods are synchronized. Blocking HTTP with a 30 s timeout per request; a failed request
 * throws {@link IOException} naming the endpoint and MLflow's error (callers decide whether that stops a
 * job: at start it should, during training it should not).
 */
public final class MlflowTracking implements AutoCloseable {
    private static final ObjectMapper JSON = new ObjectMapper();
    /** MLflow's limits for one log-batch request. */
    static final int MAX_METRICS = 1000;
    static final int MAX_PARAMS = 100;
    static final int MAX_PARAM_VALUE = 6000;
    private static final String CUT = "...[cut]";

    private final String base;
    private final HttpClient http;
    private final String auth;
    private final String experimentId;
    private final String runId;
    private final String artifactUri;
    private boolean ended;

    /** Connects and starts a run named {@code runName} in experiment {@code experiment} (created if missing). */
    public MlflowTracking(String trackingUri, String experiment, String runName, Map<String, String> tags) throws IOException {
        String b = trackingUri.endsWith("/") ? trackingUri.substring(0, trackingUri.length() - 1) : trackingUri;
        if (!b.startsWith("http://") && !b.startsWith("https://")) {
            throw new IllegalArgumentException("mlflow_tracking_uri must be an http(s):// tracking server, got '" + trackingUri + "'");
        }
        this.base = b;
        this.http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
        String token = System.getenv("MLFLOW_TRACKING_TOKEN");
        String user = System.getenv("MLFLOW_TRACKING_USERNAME");
        this.auth = token != null ? "Bearer " + token : user != null ? "Basic " + Base64.getEncoder().encodeToString(
                (user + ":" + System.getenv().getOrDefault("MLFLOW_TRACKING_PASSWORD", "")).getBytes(StandardCharsets.UTF_8)) : null;
        JsonNode found = call("GET", "experiments/get-by-name?experiment_name=" + URLEncoder.encode(experiment, StandardCharsets.UTF_8),
                null, true);
        if (found != null) {
            this.experimentId = found.path("experiment").path("experiment_id").asText();
        } else {
            ObjectNode req = JSON.createObjectNode().put("name", experiment);
            this.experimentId = call("POST", "experiments/create", req, false).path("experiment_id").asText();
        }
        ObjectNode run = JSON.createObjectNode().put("experiment_id", experimentId).put("start_time", System.currentTimeMillis())
                .put("run_name", runName);
        ArrayNode t = run.putArray("tags");
        tags.forEach((k, v) -> t.addObject().put("key", k).put("value", v));
        JsonNode info = call("POST", "runs/create", run, false).path("run").path("info");
        this.runId = info.path("run_id").asText();
        this.artifactUri = info.path("artifact_uri").asText();
    }

    public synchronized String runId() {
        return runId;
    }

    public synchronized String experimentId() {
        return experimentId;
    }

    /** Logs params (values longer than MLflow's 6000-character limit are cut, saying so). */
    public synchronized void logParams(Map<String, String> params) throws IOException {
        ObjectNode req = JSON.createObjectNode().put("run_id", runId);
        ArrayNode ps = req.putArray("params");
        for (Map.Entry<String, String> e : params.entrySet()) {
            String v = e.getValue();
            if (v.length() > MAX_PARAM_VALUE) {
                v = v.substring(0, MAX_PARAM_VALUE - CUT.length()) + CUT;
            }
            ps.addObject().put("key", e.getKey()).put("value", v);
            if (ps.size() == MAX_PARAMS) {
                call("POST", "runs/log-batch", req, false);
                ps.removeAll();
            }
        }
        if (!ps.isEmpty()) {
            call("POST", "runs/log-batch", req, false);
        }
    }

    /** Logs metrics of one step (non-finite values are skipped: MLflow's JSON cannot carry them). */
    public synchronized void logMetrics(long step, Map<String, Double> metrics) throws IOException {
        ObjectNode req = JSON.createObjectNode().put("run_id", runId);
        ArrayNode ms = req.putArray("metrics");
        long now = System.currentTimeMillis();
        for (Map.Entry<String, Double> e : metrics.entrySet()) {
            if (e.getValue() != null && Double.isFinite(e.getValue())) {
                ms.addObject().put("key", e.getKey()).put("value", e.getValue()).put("timestamp", now).put("step", step);
            }
            if (ms.size() == MAX_METRICS) {
                call("POST", "runs/log-batch", req, false);
                ms.removeAll();
            }
        }
        if (!ms.isEmpty()) {
            call("POST", "runs/log-batch", req, false);
        }
    }

    /**
     * Uploads one artifact to {@code path} (relative, '/'-separated, e.g. "model/model.safetensors") of the
     * run's artifact root. Supported roots: the server's proxy ({@code mlflow-artifacts:}) and local
     * {@code file:} roots; others throw saying which.
     */
    public synchronized void logArtifact(String path, long length, Supplier<InputStream> content) throws IOException {
        if (artifactUri.startsWith("mlflow-artifacts:")) {
            String rest = artifactUri.substring("mlflow-artifacts:".length()).replaceFirst("^/+", "");
            int slash = rest.indexOf('/');
            if (rest.startsWith("/") || (slash >= 0 && rest.substring(0, slash).contains(":"))) {
                throw new IOException("unsupported artifact URI " + artifactUri);
            }
            if (rest.contains("//")) { // mlflow-artifacts://host:port/path names its own server: use its path
                rest = rest.substring(rest.indexOf('/', rest.indexOf("//") + 2) + 1);
            }
            HttpRequest.Builder r = HttpRequest.newBuilder(URI.create(base + "/api/2.0/mlflow-artifacts/artifacts/" + rest + "/" + path))
                    .timeout(Duration.ofMinutes(10)).PUT(HttpRequest.BodyPublishers.fromPublisher(
                            HttpRequest.BodyPublishers.ofInputStream(content), length));
            send(r, "artifact " + path);
        } else if (artifactUri.startsWith("file:") || artifactUri.startsWith("/")) {
            java.nio.file.Path root = artifactUri.startsWith("/") ? java.nio.file.Path.of(artifactUri) : java.nio.file.Path.of(URI.create(artifactUri));
            java.nio.file.Path target = root.resolve(path);
            java.nio.file.Files.createDirectories(target.getParent());
            try (InputStream in = content.get()) {
                java.nio.file.Files.copy(in, target, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
            }
        } else {
            throw new IOException("cannot upload artifacts to " + artifactUri + " over the tracking API (serve artifacts with "
                    + "'mlflow server --serve-artifacts', the default, or use a file: artifact root)");
        }
    }

    /** Ends the run: FINISHED, or FAILED. */
    public synchronized void end(boolean success) throws IOException {
        if (ended) {
            return;
        }
        ended = true;
        call("POST", "runs/update", JSON.createObjectNode().put("run_id", runId).put("status", success ? "FINISHED" : "FAILED")
                .put("end_time", System.currentTimeMillis()), false);
    }

    /** Marks the run FAILED unless {@link #end} was called. */
    @Override
    public synchronized void close() throws IOException {
        end(false);
    }

    /** Calls {@code /api/2.0/mlflow/<endpoint>}; with {@code missingOk}, a RESOURCE_DOES_NOT_EXIST answer returns null. */
    private JsonNode call(String method, String endpoint, JsonNode body, boolean missingOk) throws IOException {
        HttpRequest.Builder r = HttpRequest.newBuilder(URI.create(base + "/api/2.0/mlflow/" + endpoint)).timeout(Duration.ofSeconds(30));
        if (body != null) {
            r.header("Content-Type", "application/json").method(method, HttpRequest.BodyPublishers.ofString(body.toString()));
        } else {
            r.method(method, HttpRequest.BodyPublishers.noBody());
        }
        HttpResponse<String> resp = send0(r, endpoint);
        if (resp.statusCode() / 100 == 2) {
            return resp.body().isBlank() ? JSON.createObjectNode() : JSON.readTree(resp.body());
        }
        if (missingOk && resp.body().contains("RESOURCE_DOES_NOT_EXIST")) {
            return null;
        }
        throw new IOException("MLflow " + endpoint + " at " + base + ": HTTP " + resp.statusCode() + " " + abbreviate(resp.body()));
    }

    private void send(HttpRequest.Builder r, String what) throws IOException {
        HttpResponse<String> resp = send0(r, what);
        if (resp.statusCode() / 100 != 2) {
            throw new IOException("MLflow " + what + " at " + base + ": HTTP " + resp.statusCode() + " " + abbreviate(resp.body()));
        }
    }

    private HttpResponse<String> send0(HttpRequest.Builder r, String what) throws IOException {
        if (auth != null) {
            r.header("Authorization", auth);
        }
        try {
            return http.send(r.build(), HttpResponse.BodyHandlers.ofString());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while calling MLflow " + what, e);
        } catch (IOException e) {
            throw new IOException("cannot reach the MLflow tracking server " + base + " (" + what + "): " + e, e);
        }
    }

    private static String abbreviate(String s) {
        s = s.replaceAll("\\s+", " ").strip();
        return s.length() > 300 ? s.substring(0, 300) + "..." : s;
    }
}
