package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * A training process is SIGKILLed while its asynchronous save of step 4 is half written (after its save of
 * step 2 committed, and after it took further steps while writing): the directory then holds step 2 and a
 * partial {@code .inprogress-step-00000004}; a new run on it resumes from step 2, ignores the partial save,
 * and ends with the uninterrupted run's losses and, bitwise, its weights and optimizer state.
 */
class AsyncSaveKillTest {
    @Test
    @Timeout(value = 180, unit = TimeUnit.SECONDS)
    void processKilledMidWriteResumesFromTheLastCommittedCheckpoint(@TempDir Path tmp) throws Exception {
        int total = 8;
        Path root = tmp.resolve("ckpt");
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        List<String> cmd = new ArrayList<>(List.of(java, "-Xmx256m"));
        if (ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()) {
            cmd.add("--add-modules=jdk.incubator.vector"); // the same kernels as this JVM's reference run
        }
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), AsyncSaveWorker.class.getName(), root.toString(),
                String.valueOf(total)));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        List<String> seen = new ArrayList<>();
        boolean killed = false;
        try (BufferedReader in = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            int stepsSinceStep4Write = -1;
            for (String line; (line = in.readLine()) != null; ) {
                seen.add(line);
                if (line.startsWith("WRITING") && line.contains("inprogress-step-00000004") && stepsSinceStep4Write < 0) {
                    stepsSinceStep4Write = 0;
                } else if (line.startsWith("STEP") && stepsSinceStep4Write >= 0 && ++stepsSinceStep4Write == 1) {
                    p.destroyForcibly(); // SIGKILL: no shutdown hook, no finally
                    killed = true;
                    break;
                }
            }
        }
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        System.err.println(String.join("\n", seen));
        assertTrue(killed, "the worker should still have been writing step 4 when it took step 5: " + seen);
        assertTrue(seen.contains("LOG checkpoint saved: " + root.resolve("step-00000002")), seen.toString());

        DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), 3);
        assertEquals(List.of(2L), dc.committedSteps(), "only step 2 committed: " + seen);
        Path partial = root.resolve(".inprogress-step-00000004");
        assertTrue(Files.isDirectory(partial), "the killed save's files are left aside");
        assertTrue(!Files.exists(partial.resolve(CheckpointMetadata.FILE)), "and were never committed");

        Trainer ref = AsyncCheckpointTest.trainer(Fixtures.config("gpt2"));
        List<Double> refLoss = new ArrayList<>();
        for (int s = 0; s < total; s++) {
            refLoss.add(ref.step().loss());
        }
        Trainer again = AsyncCheckpointTest.trainer(Fixtures.config("gpt2"));
        List<String> log = new ArrayList<>();
        List<Double> losses = new ArrayList<>();
        try (ResumableTraining run = new ResumableTraining(again, dc, new SelfCommunicator(), 1,
                new ResumableTraining.Options(2, false, Map.of(), true), log::add)) {
            assertEquals(2, run.resume());
            run.run(total, m -> losses.add(m.loss()));
        }
        assertEquals(refLoss.subList(2, total), losses);
        assertArrayEquals(AsyncCheckpointTest.state(ref.model(), ref.optimizer()),
                AsyncCheckpointTest.state(again.model(), again.optimizer()));
        assertTrue(!Files.exists(partial), "the next save cleaned the partial one up");
    }
}
