package org.sparkatron.train.track;

import java.io.IOException;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;

/**
 * A real MLflow tracking server for tests: {@code python -m mlflow server} on a free loopback port with a
 * SQLite store and served artifacts under a temporary folder; ready when {@code /health} answers. Stopped
 * (with its worker processes, by pid) by {@link #close}.
 */
final class MlflowServer implements AutoCloseable {
    final String uri;
    private final Process process;

    MlflowServer(Path dir) throws Exception {
        int port;
        try (ServerSocket s = new ServerSocket(0)) {
            port = s.getLocalPort();
        }
        uri = "http://127.0.0.1:" + port;
        Path log = dir.resolve("mlflow-server.log");
        process = new ProcessBuilder(List.of(PythonTool.python(), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                String.valueOf(port), "--workers", "1", "--backend-store-uri", "sqlite:///" + dir.resolve("mlflow.db"),
                "--artifacts-destination", dir.resolve("artifacts").toString()))
                .redirectErrorStream(true).redirectOutput(log.toFile()).start();
        HttpClient http = HttpClient.newHttpClient();
        long deadline = System.currentTimeMillis() + 300_000; // importing mlflow and migrating its database: minutes on a loaded 2-core machine
        while (true) {
            try {
                HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create(uri + "/health")).timeout(Duration.ofSeconds(5)).build(),
                        HttpResponse.BodyHandlers.ofString());
                if (r.statusCode() == 200) {
                    return;
                }
            } catch (IOException e) {
                // not up yet
            }
            if (!process.isAlive() || System.currentTimeMillis() > deadline) {
                close();
                throw new IllegalStateException("the MLflow server did not start: " + java.nio.file.Files.readString(log));
            }
            Thread.sleep(500);
        }
    }

    /** GET {@code /api/2.0/<path>} and parse the JSON. */
    com.fasterxml.jackson.databind.JsonNode get(String path) throws Exception {
        HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(uri + "/api/2.0/" + path)).build(),
                HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() != 200) {
            throw new IllegalStateException(path + ": HTTP " + r.statusCode() + " " + r.body());
        }
        return new com.fasterxml.jackson.databind.ObjectMapper().readTree(r.body());
    }

    /** The bytes of an artifact, downloaded through the server. */
    byte[] artifact(String runId, String path) throws Exception {
        HttpResponse<byte[]> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(uri + "/get-artifact?path="
                + java.net.URLEncoder.encode(path, "UTF-8") + "&run_uuid=" + runId)).build(), HttpResponse.BodyHandlers.ofByteArray());
        if (r.statusCode() != 200) {
            throw new IllegalStateException(path + ": HTTP " + r.statusCode());
        }
        return r.body();
    }

    @Override
    public void close() {
        process.descendants().forEach(ProcessHandle::destroy);
        process.destroy();
        try {
            if (!process.waitFor(20, java.util.concurrent.TimeUnit.SECONDS)) {
                process.descendants().forEach(ProcessHandle::destroyForcibly);
                process.destroyForcibly();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
