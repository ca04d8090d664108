package org.sparkatron.checkpoint;

import java.nio.file.Path;
import java.util.Map;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * A training process for {@link AsyncSaveKillTest}: the tiny GPT-2 of the checkpoint tests, asynchronous
 * saves every 2 steps into ROOT through a {@link SlowStorage} (each shard file takes about a second), up
 * to TOTAL steps. Prints "WRITING path" when a shard file's write begins and "STEP n" after each step, so the
 * parent can kill it while a file is half written and see that steps went on meanwhile. With MODE {@code commit}
 * the saves are every 4 steps, their files written at full speed, and the commit of step 8 is held before its
 * rename (the metadata written), printing "COMMITTING path", so that the parent can kill it mid-commit while steps
 * 9-11 run (the save of step 12 would wait for that commit).
 * Args: ROOT TOTAL [MODE: write (default) or commit].
 */
public final class AsyncSaveWorker {
    private AsyncSaveWorker() {
    }

    public static void main(String[] args) throws Exception {
        Path root = Path.of(args[0]);
        int total = Integer.parseInt(args[1]);
        Trainer t = AsyncCheckpointTest.trainer(Fixtures.config("gpt2"));
        boolean holdCommit = args.length > 2 && args[2].equals("commit");
        SlowStorage slow = new SlowStorage(holdCommit ? 0 : 100_000_000L, null, null, p -> {
            System.out.println("WRITING " + p);
            System.out.flush();
        }, from -> {
            if (holdCommit && from.endsWith(DistributedCheckpoint.IN_PROGRESS + DistributedCheckpoint.dirName(8))) {
                System.out.println("COMMITTING " + from);
                System.out.flush();
                try {
                    Thread.sleep(120_000); // the parent kills this process meanwhile
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        });
        DistributedCheckpoint dc = new DistributedCheckpoint(slow, root.toString(), 3);
        try (ResumableTraining run = new ResumableTraining(t, dc, new SelfCommunicator(), 1,
                new ResumableTraining.Options(holdCommit ? 4 : 2, false, Map.of(), true), msg -> {
                    System.out.println("LOG " + msg);
                    System.out.flush();
                })) {
            run.resume();
            run.run(total, m -> {
                System.out.println("STEP " + m.step());
                System.out.flush();
                try {
                    Thread.sleep(20); // a step of a real model takes longer than this tiny one's
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            });
        }
        System.out.println("DONE");
    }
}
