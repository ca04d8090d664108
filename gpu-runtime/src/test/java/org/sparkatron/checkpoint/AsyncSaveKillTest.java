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
 * A training process is SIGKILLed while an asynchronous save is in flight (after the previous save committed, and
 * after it took further steps meanwhile): saving every 2 steps, while step 4's files are half written; saving every
 * 4 steps, in the middle of step 8's commit on the writer thread (the metadata written, the rename not yet done).
 * The directory then holds the previous checkpoint and the partial {@code .inprogress-} one; a new run on it resumes
 * from the previous one, ignores the partial save, and ends with the uninterrupted run's losses and, bitwise, its
 * weights and optimizer state.
 */
class AsyncSaveKillTest {
    @Test
    @Timeout(value = 180, unit = TimeUnit.SECONDS)
    void processKilledMidWriteResumesFromTheLastCommittedCheckpoint(@TempDir Path tmp) throws Exception {
        Path root = tmp.resolve("ckpt");
        List<String> seen = runAndKillAfter(root, 8, "write", "WRITING", 4, 2);
        Path partial = root.resolve(".inprogress-step-00000004");
        assertTrue(!Files.exists(partial.resolve(CheckpointMetadata.FILE)), "the killed save was never committed: " + seen);
        resumesFrom(root, seen, 8, 2, 2, 4);
    }

    @Test
    @Timeout(value = 180, unit = TimeUnit.SECONDS)
    void processKilledMidCommitResumesFromTheLastCommittedCheckpoint(@TempDir Path tmp) throws Exception {
        Path root = tmp.resolve("ckpt");
        List<String> seen = runAndKillAfter(root, 12, "commit", "COMMITTING", 8, 4);
        Path partial = root.resolve(".inprogress-step-00000008");
        assertTrue(Files.exists(partial.resolve(CheckpointMetadata.FILE)), "killed between the metadata and the rename: " + seen);
        resumesFrom(root, seen, 12, 4, 4, 8);
    }

    /**
     * Runs {@link AsyncSaveWorker} for {@code total} steps in {@code mode} and SIGKILLs it at the first step it completes
     * after printing {@code marker} for step {@code killedStep}'s save (so training went on while that save was being
     * written or committed); the save of {@code previous} must have committed before.
     */
    private static List<String> runAndKillAfter(Path root, int total, String mode, String marker, int killedStep, int previous)
            throws Exception {
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        List<String> cmd = new ArrayList<>(List.of(java, "-Xmx256m"));
        if (ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()) {
            cmd.add("--add-modules=jdk.incubator.vector"); // the same kernels as this JVM's reference run
        }
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), AsyncSaveWorker.class.getName(), root.toString(),
                String.valueOf(total), mode));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        List<String> seen = new ArrayList<>();
        boolean killed = false;
        try (BufferedReader in = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            int stepsSinceMarker = -1;
            for (String line; (line = in.readLine()) != null; ) {
                seen.add(line);
                if (line.startsWith(marker) && line.contains(DistributedCheckpoint.IN_PROGRESS + DistributedCheckpoint.dirName(killedStep))
                        && stepsSinceMarker < 0) {
                    stepsSinceMarker = 0;
                } else if (line.startsWith("STEP") && stepsSinceMarker >= 0 && ++stepsSinceMarker == 1) {
                    p.destroyForcibly(); // SIGKILL: no shutdown hook, no finally
                    killed = true;
                    break;
                }
            }
        }
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        System.err.println(String.join("\n", seen));
        assertTrue(killed, "the worker should still have been at step " + killedStep + "'s save (" + marker + ") when it took a step: "
                + seen);
        assertTrue(seen.contains("LOG checkpoint saved: " + root.resolve(DistributedCheckpoint.dirName(previous))), seen.toString());
        return seen;
    }

    /**
     * Only step {@code previous} is committed (the earlier ones pruned, keep 3: at most two more); a new run saving every
     * {@code every} steps resumes from it and ends as the uninterrupted run of {@code total} steps, bitwise.
     */
    private static void resumesFrom(Path root, List<String> seen, int total, int every, int previous, int killedStep)
            throws Exception {
        DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), 3);
        assertEquals(previous, dc.committedSteps().get(0), "the newest committed checkpoint is step " + previous + ": " + seen);
        assertTrue(!dc.committedSteps().contains((long) killedStep), "the killed save did not commit: " + seen);
        Path partial = root.resolve(DistributedCheckpoint.IN_PROGRESS + DistributedCheckpoint.dirName(killedStep));
        assertTrue(Files.isDirectory(partial), "the killed save's files are left aside");

        Trainer ref = AsyncCheckpointTest.trainer(Fixtures.config("gpt2"));
        List<Double> refLoss = new ArrayList<>();
        for (int s = 0; s < total; s++) {
            refLoss.add(ref.step().loss());
        }
        Trainer again = AsyncCheckpointTest.trainer(Fixtures.config("gpt2"));
        List<String> log = new ArrayList<>();
        List<Double> losses = new ArrayList<>();
        try (ResumableTraining run = new ResumableTraining(again, dc, new SelfCommunicator(), 1,
                new ResumableTraining.Options(every, false, Map.of(), true), log::add)) {
            assertEquals(previous, run.resume());
            run.run(total, m -> losses.add(m.loss()));
        }
        assertEquals(refLoss.subList(previous, total), losses);
        assertArrayEquals(AsyncCheckpointTest.state(ref.model(), ref.optimizer()),
                AsyncCheckpointTest.state(again.model(), again.optimizer()));
        assertTrue(!Files.exists(partial), "the next save cleaned the partial one up");
    }
}
