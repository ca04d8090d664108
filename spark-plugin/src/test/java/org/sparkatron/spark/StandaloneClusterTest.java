package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.checkpoint.LocalStorage;

/**
 * The spark-submit path on a real standalone cluster: a Master and two Workers (1 core, 1 fake GPU each,
 * addresses "3" and "5"), executors in their own JVMs, Kryo with registration required. One cluster for
 * the suite; every driver runs under a timeout.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(value = 900, unit = TimeUnit.SECONDS)
class StandaloneClusterTest {
    @TempDir
    static Path dir;
    private static final int STEPS = 20;
    private StandaloneCluster cluster;
    private Path data;
    private String referenceLog;

    @BeforeAll
    void startCluster() throws Exception {
        StandaloneCluster.progress("standalone", "starting a Master and 2 Workers; three spark-submit jobs follow (minutes)");
        cluster = new StandaloneCluster(dir, "3", "5");
        data = dir.resolve("data.jsonl");
        TrainMainTest.writeJsonLines(data, SyntheticData.walks(1500, 21));
    }

    @AfterAll
    void stopCluster() {
        if (cluster != null) {
            cluster.close();
        }
    }

    private Path job(String name, int steps) throws Exception {
        ObjectNode c = TrainConfig.JSON.createObjectNode();
        c.set("model", Demo.modelConfig());
        c.put("dp", 2).put("global_batch", 8).put("seq_len", 32).put("steps", steps).put("lr", 1e-2).put("min_lr", 1e-3)
                .put("warmup_steps", 5).put("comm_timeout_s", 60)
                .put("log_interval", 1) // a progress line every step: the kill test waits for step 5 (numbers padded to the width of "150")
                .put("input", data.toString()).put("input_format", "json").put("input_schema", "tokens array<int>")
                .put("output", dir.resolve(name).toString());
        Path file = dir.resolve(name + ".json");
        Files.writeString(file, c.toString());
        return file;
    }

    /** Starts spark-submit (client mode) of TrainMain with the config file. */
    private Process submit(String name, Path config, String... overrides) throws Exception {
        return submit(name, config, List.of(), overrides);
    }

    /** As {@link #submit(String, Path, String...)}, with extra {@code --conf key=value} Spark settings. */
    private Process submit(String name, Path config, List<String> sparkConf, String... overrides) throws Exception {
        Path appJar = Files.list(cluster.home.resolve("jars")).filter(p -> p.getFileName().toString().contains("spark-plugin"))
                .filter(p -> !p.getFileName().toString().contains("test")).findFirst().orElseThrow();
        List<String> args = new ArrayList<>(List.of("--master", cluster.master(), "--deploy-mode", "client",
                "--class", TrainMain.class.getName(),
                "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
                "--conf", "spark.ui.enabled=false", "--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=1",
                "--conf", "spark.cores.max=2", "--conf", "spark.executor.resource.gpu.amount=1",
                "--conf", "spark.task.resource.gpu.amount=1", "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
                // generous waits: on a loaded 2-core machine executor JVMs can take a minute to register
                "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=150s",
                "--conf", DistributedTraining.SLOT_WAIT_CONF + "=150",
                "--conf", "spark.serializer=org.apache.spark.serializer.KryoSerializer",
                "--conf", "spark.kryo.registrationRequired=true",
                // the executors' JVM options are what users set: nothing beyond the Vector API module (our
                // SIMD math gives the same bits in every JIT tier, so a restarted executor reproduces the run)
                "--conf", "spark.executor.extraJavaOptions=--add-modules=jdk.incubator.vector"));
        for (String c : sparkConf) {
            args.addAll(List.of("--conf", c));
        }
        args.addAll(List.of(appJar.toString(), "--config", config.toString()));
        args.addAll(List.of(overrides));
        return cluster.start("driver-" + name, List.of(), "org.apache.spark.deploy.SparkSubmit", args.toArray(new String[0]));
    }

    private static List<JsonNode> ranks(Path out) throws Exception {
        List<JsonNode> l = new ArrayList<>();
        TrainConfig.JSON.readTree(Files.readString(out.resolve("ranks.json"))).forEach(l::add);
        return l;
    }

    /**
     * The uninterrupted 20-step run (output "train"): run once, by whichever test needs it first, and the
     * reference of the checkpoint-resume test.
     */
    private synchronized String reference() throws Exception {
        if (referenceLog == null) {
            Process driver = submit("train", job("train", STEPS));
            assertTrue(cluster.await("driver-train", driver, 400), "driver did not finish");
            String log = Files.readString(cluster.log("driver-train"));
            assertEquals(0, driver.exitValue(), () -> log + cluster.diagnostics());
            referenceLog = log;
        }
        return referenceLog;
    }

    @Test
    void sparkSubmitTrainsOnTwoExecutorsEachBindingItsGpu() throws Exception {
        String log = reference();
        assertTrue(log.contains("[sparkatron] step " + STEPS + "/" + STEPS), "live progress on the driver: " + log);
        List<JsonNode> ranks = ranks(dir.resolve("train"));
        assertEquals(2, ranks.size());
        Set<String> devices = new HashSet<>();
        Set<String> executors = new HashSet<>();
        Set<Long> pids = new HashSet<>();
        for (JsonNode r : ranks) {
            devices.add(r.get("device").asText().split(";")[0]); // "gpu:N; compute: ..." (no CUDA device yet)
            executors.add(r.get("executor").asText());
            pids.add(r.get("pid").asLong());
        }
        // each task bound the GPU its own Worker discovered, in its own executor JVM
        assertEquals(Set.of("gpu:3", "gpu:5"), devices);
        assertEquals(2, executors.size());
        assertEquals(2, pids.size());
        assertFalse(pids.contains(ProcessHandle.current().pid()));
        assertEquals(STEPS, Files.readAllLines(dir.resolve("train/metrics.jsonl")).size());
    }

    @Test
    void anExecutorKilledMidTrainingMakesSparkRetryTheStage() throws Exception {
        Process driver = submit("kill", job("kill", 150));
        Path log = cluster.log("driver-kill");
        cluster.awaitLog("driver-kill", driver, "[sparkatron] step   5/150", 300);
        List<ProcessHandle> executors = cluster.executors();
        assertEquals(2, executors.size(), "two executor JVMs");
        ProcessHandle victim = executors.get(0);
        assertTrue(victim.destroyForcibly(), "SIGKILL an executor");
        // no hang: the other rank fails fast, Spark retries the whole barrier stage on a replacement executor
        assertTrue(cluster.await("driver-kill", driver, 400), "driver did not finish: " + Files.readString(log) + cluster.diagnostics());
        String text = Files.readString(log);
        assertEquals(0, driver.exitValue(), () -> text + cluster.diagnostics());
        assertTrue(text.contains("(attempt 1)"), "progress of the retried attempt: " + text);
        for (JsonNode r : ranks(dir.resolve("kill"))) {
            assertTrue(r.get("attempt").asInt() >= 1, "result from a retried attempt: " + r);
            assertTrue(r.get("pid").asLong() != victim.pid());
        }
        assertEquals(150, Files.readAllLines(dir.resolve("kill/metrics.jsonl")).size());
    }

    /**
     * Fault injection with checkpoints: the same job as {@link #reference} with a checkpoint every 2 steps;
     * once one is committed, one executor's JVM is SIGKILLed. Spark retries the barrier stage on a
     * replacement executor, the new attempt resumes from the last committed checkpoint, and the final
     * model file is byte for byte the uninterrupted run's (CPU, deterministic reductions, data order a
     * function of seed and position: no tolerance), as is the whole loss trajectory in metrics.jsonl.
     */
    @Test
    void anExecutorKilledAfterACheckpointResumesFromItAndEndsWithTheUninterruptedWeights() throws Exception {
        reference();
        Path store = dir.resolve("resume-checkpoints");
        Process driver = submit("resume", job("resume", STEPS), "--checkpoint_dir", store.toString(),
                "--checkpoint_every", "2", "--keep_checkpoints", "100");
        Path log = cluster.log("driver-resume");
        long deadline = System.currentTimeMillis() + 300_000;
        while (committed(store).isEmpty()) { // polled fast: the kill must land well before the last step
            assertTrue(driver.isAlive() && System.currentTimeMillis() < deadline,
                    () -> "no checkpoint committed: " + read(log) + cluster.diagnostics());
            Thread.sleep(20);
        }
        List<ProcessHandle> executors = cluster.executors();
        assertEquals(2, executors.size(), "two executor JVMs");
        ProcessHandle victim = executors.get(0);
        assertTrue(victim.destroyForcibly(), "SIGKILL an executor");
        victim.onExit().get(30, TimeUnit.SECONDS);
        Thread.sleep(1000); // rank 0 may still be renaming a save the victim had finished its part of
        List<Long> before = committed(store);
        long last = before.get(before.size() - 1);
        assertTrue(last < STEPS, "training ended before the kill; the test needs more steps: " + before);

        // metrics.jsonl is live: the killed attempt's steps are on disk before the job ends
        while (attempt0Steps(dir.resolve("resume/metrics.jsonl")) < last) {
            assertTrue(System.currentTimeMillis() < deadline && driver.isAlive(), () -> "no live metrics: " + read(log));
            Thread.sleep(100);
        }

        assertTrue(cluster.await("driver-resume", driver, 400), () -> "driver did not finish: " + read(log) + cluster.diagnostics());
        String text = read(log);
        assertEquals(0, driver.exitValue(), () -> text + cluster.diagnostics());
        int attempt = ranks(dir.resolve("resume")).get(0).get("attempt").asInt();
        assertTrue(attempt >= 1, "result from a retried attempt");
        for (JsonNode r : ranks(dir.resolve("resume"))) {
            assertEquals(attempt, r.get("attempt").asInt());
            assertTrue(r.get("pid").asLong() != victim.pid());
        }
        String resumed = "rank 0 (attempt " + attempt + "): resumed from " + store.resolve(DistributedCheckpoint.dirName(last))
                + " (step " + last + ",";
        assertTrue(text.contains(resumed), "the retry resumed from the last committed checkpoint (" + resumed + "): " + text);
        assertArrayEquals(Files.readAllBytes(dir.resolve("train/model.safetensors")), Files.readAllBytes(dir.resolve("resume/model.safetensors")),
                "final weights equal the uninterrupted run's, bitwise");

        // the whole trajectory: steps 1..last from the killed attempt's live reports, the rest from the retry
        List<String> ref = Files.readAllLines(dir.resolve("train/metrics.jsonl"));
        List<String> got = Files.readAllLines(dir.resolve("resume/metrics.jsonl"));
        assertEquals(STEPS, got.size(), got::toString);
        for (int i = 0; i < STEPS; i++) {
            JsonNode g = DistributedTraining.metric(got.get(i));
            assertEquals(i + 1, g.get("step").asInt());
            assertEquals(i + 1 <= last ? 0 : attempt, g.get("attempt").asInt(), got.get(i));
            assertEquals(DistributedTraining.metric(ref.get(i)).get("loss").asDouble(), g.get("loss").asDouble(), 0.0, "loss of step " + (i + 1));
        }
    }

    /**
     * Issue 22, finding 2: a rank whose thread freezes and ignores interrupts (fault injection
     * {@code fail_mode: "freeze"}, as a thread stuck in native code or a GPU kernel) must not hold its slot.
     * The other rank fails at its communicator timeout (10 s), Spark kills the stage's tasks, the frozen one
     * does not end, and Spark's task reaper (on by default for {@code ./sparkatron train}; 10 s here) takes
     * its executor JVM down, the Worker starts a replacement, and the retried stage trains to the end.
     * Without the reaper the retry never gets the slot (the frozen thread holds it for its hour). Deadlines
     * are generous: on a loaded 2-core machine an executor JVM can take a minute to start.
     */
    @Test
    void aFrozenRankIsEndedByTheTaskReaperAndTheRetryFinishesTheJob() throws Exception {
        Process driver = submit("freeze", job("freeze", STEPS), List.of("spark.task.reaper.killTimeout=10s",
                        "spark.task.reaper.pollingInterval=2s"),
                "--fail_rank", "1", "--fail_step", "3", "--fail_attempts", "1", "--fail_mode", "freeze", "--comm_timeout_s", "10");
        Path log = cluster.log("driver-freeze");
        List<ProcessHandle> before = new ArrayList<>();
        long deadline = System.currentTimeMillis() + 400_000;
        while (before.size() < 2) { // the executors of the first attempt
            assertTrue(driver.isAlive() && System.currentTimeMillis() < deadline, () -> "no executors: " + read(log) + cluster.diagnostics());
            Thread.sleep(200);
            before = cluster.executors();
        }
        while (!cluster.executorLogs().contains("injected freeze at step 3")) {
            assertTrue(driver.isAlive() && System.currentTimeMillis() < deadline, () -> "no freeze: " + read(log) + cluster.diagnostics());
            Thread.sleep(200);
        }
        long frozeAt = System.nanoTime();
        // the retry may first fail to fetch the data shuffle's blocks that lived on the killed executor; Spark
        // then recomputes them and runs another attempt (attempt 2): any retried attempt's progress counts
        long retryDeadline = System.currentTimeMillis() + 400_000;
        while (!read(log).contains("(attempt ")) {
            assertTrue(driver.isAlive() && System.currentTimeMillis() < retryDeadline, () -> "no retry: " + read(log) + cluster.diagnostics());
            Thread.sleep(200);
        }
        System.out.printf(java.util.Locale.ROOT, "frozen rank: the retried attempt reported its first step %.1f s after the freeze "
                + "(comm_timeout_s 10, spark.task.reaper.killTimeout 10s)%n", (System.nanoTime() - frozeAt) / 1e9);
        assertTrue(driver.waitFor(400, TimeUnit.SECONDS), () -> "driver did not finish: " + read(log) + cluster.diagnostics());
        String text = read(log);
        assertEquals(0, driver.exitValue(), () -> text + cluster.diagnostics());
        String executors = cluster.executorLogs();
        assertTrue(executors.contains("injected freeze at step 3"), () -> "rank 1 froze: " + cluster.diagnostics());
        assertTrue(executors.contains("could not be stopped within 10000 ms"),
                () -> "the task reaper ended the frozen executor: " + cluster.diagnostics());
        long survivors = before.stream().filter(ProcessHandle::isAlive).count();
        assertTrue(survivors <= 1, "the frozen executor's JVM is gone: " + before);
        for (JsonNode r : ranks(dir.resolve("freeze"))) {
            assertTrue(r.get("attempt").asInt() >= 1, "result from a retried attempt: " + r);
        }
        assertEquals(STEPS, Files.readAllLines(dir.resolve("freeze/metrics.jsonl")).size());
    }

    private static List<Long> committed(Path store) throws Exception {
        return new DistributedCheckpoint(new LocalStorage(), store.toString(), 100).committedSteps().stream().sorted().toList();
    }

    private static int attempt0Steps(Path metrics) throws Exception {
        int n = 0;
        if (Files.exists(metrics)) {
            for (String l : Files.readAllLines(metrics)) {
                JsonNode m;
                try {
                    m = DistributedTraining.metric(l);
                } catch (IllegalArgumentException partial) { // the line being written
                    continue;
                }
                if (m.path("attempt").asInt() == 0) {
                    n = Math.max(n, m.path("step").asInt());
                }
            }
        }
        return n;
    }

    private static String read(Path p) {
        try {
            return Files.readString(p);
        } catch (java.io.IOException e) {
            return "(cannot read " + p + ": " + e + ")";
        }
    }
}
