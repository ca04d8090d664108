package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The driver's live metrics.jsonl: step reports sent by a rank's {@link ProgressReporter} are in the file
 * while the job still runs (the server is not closed yet), rank 0's event messages are not steps, and the
 * final rewrite is the clean trajectory: the killed attempt's live steps up to the resume point, then the
 * retry's authoritative lines.
 */
class MetricsLogTest {
    @TempDir
    Path tmp;

    private static String step(int s, double loss, int attempt) {
        return "{\"step\": " + s + ", \"loss\": " + loss + ", \"attempt\": " + attempt + "}";
    }

    private static List<String> lines(Path f) throws Exception {
        return Files.exists(f) ? Files.readAllLines(f).stream().filter(l -> !l.isBlank()).toList() : List.of();
    }

    @Test
    @Timeout(30)
    void appendsEachStepAsItArrivesAndEndsWithTheTrajectory() throws Exception {
        byte[] secret = "metrics-log-test-secret-012345678".getBytes(java.nio.charset.StandardCharsets.UTF_8);
        Path out = tmp.resolve("out");
        Path file = out.resolve(MetricsLog.FILE);
        try (MetricsLog live = new MetricsLog(out.toString(), new Configuration());
             ProgressServer server = new ProgressServer("127.0.0.1", "127.0.0.1", secret, 5, null, live)) {
            try (ProgressReporter attempt0 = new ProgressReporter(server.endpoint(), secret)) {
                attempt0.report("{\"message\": \"no checkpoint: starting from step 0\", \"attempt\": 0}");
                for (int s = 1; s <= 3; s++) {
                    attempt0.report(step(s, 5.0 - s, 0));
                    int want = s;
                    long deadline = System.currentTimeMillis() + 10_000;
                    while (lines(file).size() < want) { // live: on disk before the job ends
                        assertTrue(System.currentTimeMillis() < deadline, "step " + s + " not in " + file + ": " + lines(file));
                        Thread.sleep(20);
                    }
                    assertEquals(step(s, 5.0 - s, 0).replace(" ", ""), lines(file).get(s - 1).replace(" ", ""));
                }
            }
            // the retry resumes after step 2 (a checkpoint) and reports steps 3..5
            try (ProgressReporter attempt1 = new ProgressReporter(server.endpoint(), secret)) {
                attempt1.report("{\"message\": \"resumed from step-00000002 (step 2, ...)\", \"attempt\": 1}");
                for (int s = 3; s <= 5; s++) {
                    attempt1.report(step(s, 4.5 - s, 1));
                }
                long deadline = System.currentTimeMillis() + 10_000;
                while (lines(file).size() < 6) {
                    assertTrue(System.currentTimeMillis() < deadline, "live lines: " + lines(file));
                    Thread.sleep(20);
                }
            }
            assertEquals(6, lines(file).size(), "every report in arrival order, messages excluded: " + lines(file));
            List<String> written = live.finish(List.of(step(3, 1.5, 1), step(4, 0.5, 1), step(5, -0.5, 1)));
            assertEquals(written, lines(file));
            assertEquals(5, written.size(), written::toString);
            for (int i = 0; i < 5; i++) {
                var m = DistributedTraining.metric(written.get(i));
                assertEquals(i + 1, m.get("step").asInt());
                assertEquals(i < 2 ? 0 : 1, m.get("attempt").asInt(), "steps 1-2 from the killed attempt, 3-5 from the retry");
            }
        }
    }
}
