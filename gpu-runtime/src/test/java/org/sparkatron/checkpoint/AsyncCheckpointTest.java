package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.Trainer;

/**
 * Asynchronous saves ({@link AsyncCheckpointer}, Megatron's {@code --async-save}): training goes on while the
 * files are written, the checkpoint holds the state of the step it was started at, it commits only once
 * every rank wrote its files (with the same metadata, sizes and CRC32C as a blocking save), a failed write
 * fails every rank and keeps the earlier checkpoints, and a run that dies with a save in flight resumes from
 * the previous checkpoint and ends bitwise where the uninterrupted run ends; a commit that fails on rank 0's
 * writer thread fails every rank's next poll or finish. {@link AsyncSaveKillTest} kills a real process in the middle
 * of the write and in the middle of the commit.
 */
class AsyncCheckpointTest {
    @TempDir
    Path tmp;

    static Trainer trainer(ModelConfig cfg) {
        Transformer m = new Transformer(cfg, TestDevices.create());
        m.initialize(5);
        m.setDropout(0.1f, 3);
        return new Trainer(m, Fixtures.data(cfg, 21), Fixtures.options(2));
    }

    /** Weights, m and v of a trainer, concatenated. */
    static float[] state(Transformer m, AdamW opt) {
        float[] w = TestDevices.read(m.device(), m.params().weights());
        float[] a = TestDevices.read(m.device(), opt.firstMoment());
        float[] b = TestDevices.read(m.device(), opt.secondMoment());
        float[] all = new float[w.length + a.length + b.length];
        System.arraycopy(w, 0, all, 0, w.length);
        System.arraycopy(a, 0, all, w.length, a.length);
        System.arraycopy(b, 0, all, w.length + a.length, b.length);
        return all;
    }

    /**
     * On the CPU device the writer thread copies the live state while the next step's forward and backward run;
     * that step's update must wait for the copy. The writer is held before it copies: the next step does not get
     * past its backward, and the checkpoint holds step 2's state (without the wait it would hold step 3's).
     * On the other devices the training thread copies in {@code start}, and the step is not held.
     */
    @Test
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void theNextStepsUpdateWaitsUntilTheWriterHasCopiedTheState() throws Exception {
        ModelConfig cfg = Fixtures.config("gpt2");
        Trainer t = trainer(cfg);
        t.step();
        t.step();
        float[] atStep2 = state(t.model(), t.optimizer());
        DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("ckpt").toString(), 2);
        SelfCommunicator world = new SelfCommunicator();
        boolean copiedByWriter = t.model().device() instanceof org.sparkatron.device.cpu.CpuDevice cpu && !cpu.isStrict();
        CountDownLatch gate = new CountDownLatch(1);
        java.util.concurrent.ExecutorService trainingThread = java.util.concurrent.Executors.newSingleThreadExecutor();
        try (AsyncCheckpointer saver = new AsyncCheckpointer(dc, true)) {
            saver.writerStartsForTest = () -> {
                try {
                    gate.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            };
            saver.start(world, 1, t.model(), t.optimizer(), t.data().consumed(), Map.of());
            java.util.concurrent.Future<Trainer.StepMetrics> step3 = trainingThread.submit(t::step);
            if (copiedByWriter) {
                Thread.sleep(1500); // a step of this model takes milliseconds: it is waiting
                assertFalse(step3.isDone(), "step 3 updated the weights before the writer copied step 2's");
            }
            gate.countDown();
            assertEquals(3, step3.get(30, TimeUnit.SECONDS).step());
            assertFalse(java.util.Arrays.equals(atStep2, state(t.model(), t.optimizer())), "step 3 was taken");
            assertEquals(dc.dir(2), saver.finish(world));
        } finally {
            trainingThread.shutdownNow();
        }
        Trainer fresh = trainer(cfg);
        dc.load(dc.dir(2), fresh.model(), fresh.optimizer());
        assertArrayEquals(atStep2, state(fresh.model(), fresh.optimizer()), "the checkpoint holds step 2's state");
    }

    @Test
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void trainingGoesOnWhileTheFilesAreWrittenAndTheCheckpointHoldsItsStepsState() throws Exception {
        ModelConfig cfg = Fixtures.config("gpt2");
        Trainer t = trainer(cfg);
        t.step();
        t.step();
        float[] atStep2 = state(t.model(), t.optimizer());
        long dropoutAt2 = t.model().trainSteps();
        long consumedAt2 = t.data().consumed();
        CountDownLatch gate = new CountDownLatch(1);
        List<String> files = Collections.synchronizedList(new ArrayList<>());
        DistributedCheckpoint dc = new DistributedCheckpoint(new SlowStorage(0, gate, null, files::add),
                tmp.resolve("ckpt").toString(), 2);
        SelfCommunicator world = new SelfCommunicator();
        try (AsyncCheckpointer saver = new AsyncCheckpointer(dc, true)) {
            saver.start(world, 1, t.model(), t.optimizer(), t.data().consumed(), Map.of("k", "v"));
            // The writer is held at its first file: steps run, nothing commits.
            for (int s = 0; s < 3; s++) {
                t.step();
                assertNull(saver.poll(world), "nothing commits while a file is being written");
            }
            assertTrue(saver.pending());
            assertEquals(List.of(), dc.committedSteps());
            assertFalse(java.util.Arrays.equals(atStep2, state(t.model(), t.optimizer())), "training moved on");
            gate.countDown();
            String dir = saver.finish(world);
            assertEquals(dc.dir(2), dir);
            assertFalse(saver.pending());
        }
        assertEquals(List.of(2L), dc.committedSteps());
        assertEquals(2, files.size(), "a model and an optimizer file: " + files);
        // What was saved is the state of step 2, not of the steps that ran during the write.
        Trainer fresh = trainer(cfg);
        CheckpointMetadata meta = dc.load(dc.dir(2), fresh.model(), fresh.optimizer());
        assertEquals(2, meta.step());
        assertEquals(dropoutAt2, meta.dropoutSteps(), "the dropout counter of step 2, not of the commit");
        assertEquals(consumedAt2, meta.consumedSamples(), "the data position of step 2");
        assertEquals("v", meta.extra().get("k"));
        assertArrayEquals(atStep2, state(fresh.model(), fresh.optimizer()));
        // Byte for byte what a blocking save of the same state writes.
        DistributedCheckpoint blocking = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("blocking").toString(), 2);
        blocking.save(world, 1, fresh.model(), fresh.optimizer(), consumedAt2, Map.of("k", "v"));
        for (String f : List.of("model-tp00-of01.safetensors", "optim-tp00-of01.safetensors")) {
            assertArrayEquals(Files.readAllBytes(Path.of(dc.dir(2), f)), Files.readAllBytes(Path.of(blocking.dir(2), f)), f);
        }
    }

    @Test
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void aRankThatFailsToWriteFailsEveryRankAndTheEarlierCheckpointStays() throws Exception {
        ModelConfig cfg = Fixtures.config("gpt2");
        Path root = tmp.resolve("ckpt");
        List<String> errors = LocalRanks.run(2, (rank, world) -> {
            try (Fixtures.Place place = Fixtures.place(2, 1, world)) {
                Transformer m = Fixtures.model(cfg, place.tp());
                Trainer t = new Trainer(m, Fixtures.data(cfg, 3), Fixtures.options(2));
                t.step();
                DistributedCheckpoint ok = new DistributedCheckpoint(new LocalStorage(), root.toString(), 3);
                try (AsyncCheckpointer saver = new AsyncCheckpointer(ok, true)) {
                    saver.start(world, 1, m, t.optimizer(), t.data().consumed(), Map.of());
                    assertNotNull(saver.finish(world));
                }
                t.step();
                // TP rank 1's optimizer file cannot be written.
                DistributedCheckpoint bad = new DistributedCheckpoint(new SlowStorage(0, null, "optim-tp01", p -> { }),
                        root.toString(), 3);
                try (AsyncCheckpointer saver = new AsyncCheckpointer(bad, true)) {
                    saver.start(world, 1, m, t.optimizer(), t.data().consumed(), Map.of());
                    IOException e = assertThrows(IOException.class, () -> {
                        while (saver.poll(world) == null) {
                            t.step(); // keeps training until the outcome is known
                        }
                    });
                    assertFalse(saver.pending());
                    return e.getMessage();
                }
            }
        });
        assertTrue(errors.get(1).contains("injected failure"), errors.get(1));
        assertTrue(errors.get(0).contains("rank(s) [1] failed to write"), errors.get(0));
        DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), 3);
        assertEquals(List.of(1L), dc.committedSteps(), "the failed save committed nothing");
        assertTrue(Files.exists(root.resolve(".inprogress-step-00000002")), "its files stay aside until the next save");
    }

    @Test
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void aCommitThatFailsOnRankZerosWriterFailsEveryRanksNextPollOrFinishAndTheEarlierCheckpointStays() throws Exception {
        ModelConfig cfg = Fixtures.config("gpt2");
        Path root = tmp.resolve("ckpt");
        List<String> errors = LocalRanks.run(2, (rank, world) -> {
            try (Fixtures.Place place = Fixtures.place(2, 1, world)) {
                Transformer m = Fixtures.model(cfg, place.tp());
                Trainer t = new Trainer(m, Fixtures.data(cfg, 3), Fixtures.options(2));
                t.step();
                // every rename (the commit on rank 0's writer thread) fails, except step 1's
                DistributedCheckpoint dc = new DistributedCheckpoint(new SlowStorage(0, null, null, p -> { }, from -> {
                    if (!from.endsWith(DistributedCheckpoint.dirName(1))) {
                        throw new IllegalStateException("injected rename failure of " + from);
                    }
                }), root.toString(), 3);
                try (AsyncCheckpointer saver = new AsyncCheckpointer(dc, true)) {
                    saver.start(world, 1, m, t.optimizer(), t.data().consumed(), Map.of());
                    assertEquals(dc.dir(1), saver.finish(world));
                    t.step();
                    saver.start(world, 1, m, t.optimizer(), t.data().consumed(), Map.of());
                    IOException byPoll = assertThrows(IOException.class, () -> {
                        while (saver.poll(world) == null) {
                            t.step(); // keeps training until the outcome is known
                        }
                    });
                    assertFalse(saver.pending());
                    t.optimizer().setStep(7);
                    saver.start(world, 1, m, t.optimizer(), t.data().consumed(), Map.of());
                    IOException byFinish = assertThrows(IOException.class, () -> saver.finish(world));
                    assertFalse(saver.pending());
                    return byPoll.getMessage() + " | " + byFinish.getMessage();
                }
            }
        });
        assertTrue(errors.get(0).contains("rank 0 could not commit " + root.resolve("step-00000002"))
                && errors.get(0).contains("injected rename failure"), errors.get(0));
        assertTrue(errors.get(0).contains("rank 0 could not commit " + root.resolve("step-00000007")), errors.get(0));
        assertTrue(errors.get(1).contains("rank 0 could not commit " + root.resolve("step-00000002") + " (see its log)"),
                errors.get(1));
        assertTrue(errors.get(1).contains("rank 0 could not commit " + root.resolve("step-00000007") + " (see its log)"),
                errors.get(1));
        DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root.toString(), 3);
        assertEquals(List.of(1L), dc.committedSteps(), "the failed commits committed nothing");
    }

    @Test
    @Timeout(value = 90, unit = TimeUnit.SECONDS)
    void aRunThatDiesWithASaveInFlightResumesFromThePreviousOneAndEndsBitwiseAsTheUninterruptedRun() throws Exception {
        ModelConfig cfg = Fixtures.config("llama");
        int total = 9;
        Trainer ref = trainer(cfg);
        List<Double> refLoss = new ArrayList<>();
        for (int s = 0; s < total; s++) {
            refLoss.add(ref.step().loss());
        }
        String root = tmp.resolve("ckpt").toString();
        // Every shard write takes a while, so the step-6 save is still being written when the run dies at step 7.
        DistributedCheckpoint slow = new DistributedCheckpoint(new SlowStorage(30_000_000L, null, null, p -> { }), root, 2);
        ResumableTraining.Options async = new ResumableTraining.Options(3, false, Map.of(), true);
        List<String> log = Collections.synchronizedList(new ArrayList<>());
        Trainer first = trainer(cfg);
        try (ResumableTraining run1 = new ResumableTraining(first, slow, new SelfCommunicator(), 1, async, log::add)) {
            assertEquals(0, run1.resume());
            assertThrows(IllegalStateException.class, () -> run1.run(total, m -> {
                if (m.step() == 7) {
                    throw new IllegalStateException("dies after step 7");
                }
            }));
        }
        DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root, 2);
        assertEquals(List.of(3L), dc.committedSteps(), "step 6's save never committed: " + log);
        Trainer second = trainer(cfg);
        try (ResumableTraining run2 = new ResumableTraining(second, dc, new SelfCommunicator(), 1, async, log::add)) {
            assertEquals(3, run2.resume());
            List<Double> losses = new ArrayList<>();
            run2.run(total, m -> losses.add(m.loss()));
            assertEquals(refLoss.subList(3, total), losses);
        }
        assertArrayEquals(state(ref.model(), ref.optimizer()), state(second.model(), second.optimizer()));
        assertEquals(List.of(9L, 6L), dc.committedSteps(), "steps 6 (async) and 9 (the final save, waited for)");
    }

    /** The CPU thread budget a run saved with is in the checkpoint; a resume with another says what that means. */
    @Test
    @Timeout(value = 90, unit = TimeUnit.SECONDS)
    void aResumeWithAnotherCpuThreadCountSaysItWillNotBeBitwiseAndOneWithTheSameSaysNothing() throws Exception {
        int before = org.sparkatron.device.cpu.Blas.threads();
        try {
            ModelConfig cfg = Fixtures.config("llama");
            String root = tmp.resolve("threads").toString();
            DistributedCheckpoint dc = new DistributedCheckpoint(new LocalStorage(), root, 2);
            ResumableTraining.Options every3 = new ResumableTraining.Options(3, false, Map.of(), true);
            List<String> log = Collections.synchronizedList(new ArrayList<>());
            org.sparkatron.device.cpu.Blas.setThreads(1);
            try (ResumableTraining run = new ResumableTraining(trainer(cfg), dc, new SelfCommunicator(), 1, every3, log::add)) {
                assertEquals(0, run.resume());
                run.run(3, m -> { });
            }
            assertEquals("1", dc.metadata(dc.dir(3)).extra().get(AsyncCheckpointer.CPU_THREADS_KEY));
            org.sparkatron.device.cpu.Blas.setThreads(2);
            log.clear();
            try (ResumableTraining run = new ResumableTraining(trainer(cfg), dc, new SelfCommunicator(), 1, every3, log::add)) {
                assertEquals(3, run.resume());
            }
            assertTrue(log.stream().anyMatch(l -> l.contains("saved with 1 CPU threads per rank, this run has 2")
                    && l.contains("not bit for bit")), log.toString());
            org.sparkatron.device.cpu.Blas.setThreads(1);
            log.clear();
            try (ResumableTraining run = new ResumableTraining(trainer(cfg), dc, new SelfCommunicator(), 1, every3, log::add)) {
                assertEquals(3, run.resume());
            }
            assertTrue(log.stream().noneMatch(l -> l.contains("CPU threads per rank")), log.toString());
        } finally {
            org.sparkatron.device.cpu.Blas.setThreads(before);
        }
    }
}
