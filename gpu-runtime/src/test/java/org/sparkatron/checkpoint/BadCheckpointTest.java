package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.OutputStream;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.train.Trainer;

/**
 * Truncated, corrupted, incomplete and mismatched checkpoints are refused with the file and the problem
 * named; automatic resume falls back past damaged ones and says so; a save that fails part-way (a rank's
 * write throws) fails on every rank and leaves the previous checkpoint loadable; only the last K are kept.
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class BadCheckpointTest {
    @TempDir
    Path tmp;
    private ModelConfig cfg;
    private DistributedCheckpoint ckpt;
    private float[] weightsAtStep1;
    private float[] firstMomentAtStep1;
    private float[] secondMomentAtStep1;

    @BeforeEach
    void twoCheckpoints() throws Exception {
        cfg = Fixtures.config("gpt2");
        ckpt = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("ckpt").toString(), 5);
        Trainer t = trainer();
        t.step();
        save(t);
        weightsAtStep1 = weights(t.model());
        firstMomentAtStep1 = TestDevices.read(t.model().device(), t.optimizer().firstMoment());
        secondMomentAtStep1 = TestDevices.read(t.model().device(), t.optimizer().secondMoment());
        t.step();
        save(t);
    }

    private Trainer trainer() {
        Transformer m = Fixtures.model(cfg, TensorParallel.none());
        return new Trainer(m, Fixtures.data(cfg, 1), Fixtures.options(2));
    }

    private void save(Trainer t) throws IOException {
        ckpt.save(new SelfCommunicator(), 1, t.model(), t.optimizer(), t.data().consumed(), Map.of());
    }

    private static float[] weights(Transformer m) {
        float[] w = new float[(int) m.params().numel()];
        System.arraycopy(m.params().downloadWeights(), 0, w, 0, w.length);
        return w;
    }

    private Path file(long step, String name) {
        return tmp.resolve("ckpt").resolve(DistributedCheckpoint.dirName(step)).resolve(name);
    }

    /**
     * Resume falls back to step 1 after step 2 was damaged, logging why; returns that log line. The weights and
     * moments are step 1's although step 2's intact files were read into them first.
     */
    private String assertFallsBackToStep1() throws IOException {
        Trainer t = trainer();
        List<String> log = new ArrayList<>();
        CheckpointMetadata m = ckpt.resume(new SelfCommunicator(), t.model(), t.optimizer(), log::add).orElseThrow();
        assertEquals(1, m.step());
        assertEquals(1, t.optimizer().step());
        assertArrayEquals(weightsAtStep1, weights(t.model()));
        assertArrayEquals(firstMomentAtStep1, TestDevices.read(t.model().device(), t.optimizer().firstMoment()));
        assertArrayEquals(secondMomentAtStep1, TestDevices.read(t.model().device(), t.optimizer().secondMoment()));
        assertEquals(1, log.size(), log.toString());
        assertTrue(log.get(0).contains(DistributedCheckpoint.dirName(2)) && log.get(0).contains("falling back"), log.get(0));
        return log.get(0);
    }

    private CheckpointException loadStep2() {
        Trainer t = trainer();
        return assertThrows(CheckpointException.class, () -> ckpt.load(ckpt.dir(2), t.model(), t.optimizer()));
    }

    @Test
    void truncatedFileIsRefusedAndResumeFallsBack() throws Exception {
        Path f = file(2, "model-tp00-of01.safetensors");
        try (RandomAccessFile raf = new RandomAccessFile(f.toFile(), "rw")) {
            raf.setLength(raf.length() - 100);
        }
        String msg = loadStep2().getMessage();
        assertTrue(msg.contains("model-tp00-of01.safetensors") && msg.contains("truncated"), msg);
        assertTrue(assertFallsBackToStep1().contains("truncated"));
    }

    @Test
    void aDamagedHeaderIsReportedAsTheCorruptionItIs() throws Exception {
        Path f = file(2, "model-tp00-of01.safetensors");
        byte[] b = Files.readAllBytes(f);
        String header = new String(b, 8, 200, java.nio.charset.StandardCharsets.ISO_8859_1);
        int at = 8 + header.indexOf("\"data_offsets\"");
        assertTrue(at > 8, header);
        b[at + 1] = 'x'; // "data_offsets" -> "xata_offsets": the header no longer parses as a safetensors header
        Files.write(f, b);
        String msg = loadStep2().getMessage();
        assertTrue(msg.contains("model-tp00-of01.safetensors") && msg.contains("corrupted") && msg.contains("CRC32C"), msg);
        assertTrue(assertFallsBackToStep1().contains("corrupted"));
    }

    @Test
    void corruptedFileIsRefusedByChecksum() throws Exception {
        Path f = file(2, "optim-tp00-of01.safetensors");
        try (RandomAccessFile raf = new RandomAccessFile(f.toFile(), "rw")) {
            raf.seek(raf.length() / 2);
            int b = raf.read();
            raf.seek(raf.length() / 2);
            raf.write(b ^ 0x10);
        }
        String msg = loadStep2().getMessage();
        assertTrue(msg.contains("optim-tp00-of01.safetensors") && msg.contains("corrupted") && msg.contains("CRC32C"), msg);
        assertTrue(assertFallsBackToStep1().contains("corrupted"));
    }

    @Test
    void checkpointWithoutMetadataIsIncomplete() throws Exception {
        Files.delete(file(2, CheckpointMetadata.FILE));
        String msg = loadStep2().getMessage();
        assertTrue(msg.contains(CheckpointMetadata.FILE) && msg.contains("incomplete"), msg);
        assertFallsBackToStep1();
    }

    @Test
    void malformedMetadataIsRefused() throws Exception {
        Files.writeString(file(2, CheckpointMetadata.FILE), "{\"format\": \"sparkatron-distributed-checkpoint\", \"version\": 1");
        String msg = loadStep2().getMessage();
        assertTrue(msg.contains(CheckpointMetadata.FILE) && msg.contains("malformed"), msg);
        assertFallsBackToStep1();
    }

    @Test
    void otherModelConfigOrVocabularyIsRefusedWithoutFallback() throws Exception {
        ModelConfig wider = Fixtures.config("gpt2", 67, 48);
        Transformer m = Fixtures.model(wider, TensorParallel.none());
        CheckpointException e = assertThrows(CheckpointException.class, () -> ckpt.load(ckpt.dir(2), m, null));
        assertTrue(e.getMessage().contains("n_embd 32 (model: 48)"), e.getMessage());
        assertFalse(e.fallbackAllowed());
        CheckpointException r = assertThrows(CheckpointException.class,
                () -> ckpt.resume(new SelfCommunicator(), m, null, s -> { }));
        assertTrue(r.getMessage().contains(DistributedCheckpoint.dirName(2)), "resume names the newest checkpoint: " + r.getMessage());

        Transformer v = Fixtures.model(Fixtures.config("gpt2", 70, 32), TensorParallel.none());
        CheckpointException ev = assertThrows(CheckpointException.class, () -> ckpt.load(ckpt.dir(2), v, null));
        assertTrue(ev.getMessage().contains("vocabulary of 67 tokens, the model has 70"), ev.getMessage());
    }

    @Test
    void noUsableCheckpointIsAnErrorNotAFreshStart() throws Exception {
        Files.delete(file(2, CheckpointMetadata.FILE));
        Files.delete(file(1, CheckpointMetadata.FILE));
        Trainer t = trainer();
        CheckpointException e = assertThrows(CheckpointException.class,
                () -> ckpt.resume(new SelfCommunicator(), t.model(), t.optimizer(), s -> { }));
        assertTrue(e.getMessage().contains("no usable checkpoint") && e.getMessage().contains(DistributedCheckpoint.dirName(1)),
                e.getMessage());
    }

    @Test
    void keepsTheLastK() throws Exception {
        DistributedCheckpoint two = new DistributedCheckpoint(new LocalStorage(), tmp.resolve("k").toString(), 2);
        Trainer t = trainer();
        for (int s = 0; s < 4; s++) {
            t.step();
            two.save(new SelfCommunicator(), 1, t.model(), t.optimizer(), t.data().consumed(), Map.of());
        }
        assertEquals(List.of(4L, 3L), two.committedSteps());
    }

    /** Local files staged like a remote store (no local path), with writes of matching files failing. */
    private static final class FailingStorage implements CheckpointStorage {
        private final LocalStorage d = new LocalStorage();
        private final String failOn;

        FailingStorage(String failOn) {
            this.failOn = failOn;
        }

        @Override
        public String child(String dir, String name) {
            return d.child(dir, name);
        }

        @Override
        public boolean exists(String path) {
            return d.exists(path);
        }

        @Override
        public List<String> list(String dir) throws IOException {
            return d.list(dir);
        }

        @Override
        public void mkdirs(String dir) throws IOException {
            d.mkdirs(dir);
        }

        @Override
        public long length(String path) throws IOException {
            return d.length(path);
        }

        @Override
        public OutputStream create(String path) throws IOException {
            OutputStream out = d.create(path);
            if (failOn == null || !path.contains(failOn)) {
                return out;
            }
            return new OutputStream() { // fails after part of the file was written: a crash mid-write
                private long n;

                @Override
                public void write(int b) throws IOException {
                    write(new byte[] {(byte) b}, 0, 1);
                }

                @Override
                public void write(byte[] b, int off, int len) throws IOException {
                    if (n + len > 1000) {
                        throw new IOException("injected write failure on " + path);
                    }
                    out.write(b, off, len);
                    n += len;
                }

                @Override
                public void close() throws IOException {
                    out.close();
                }
            };
        }

        @Override
        public java.io.InputStream open(String path) throws IOException {
            return d.open(path);
        }

        @Override
        public void rename(String from, String to) throws IOException {
            d.rename(from, to);
        }

        @Override
        public void delete(String path) throws IOException {
            d.delete(path);
        }
    }

    @Test
    void failedWriteDuringSaveFailsEveryRankAndKeepsThePreviousCheckpoint() throws Exception {
        String root = tmp.resolve("dp").toString();
        // DP 2: world rank 1 writes the optimizer file of TP rank 0; its write fails part-way.
        List<String> errors = LocalRanks.run(2, (rank, world) -> {
            Transformer m = Fixtures.model(cfg, TensorParallel.none());
            Trainer t = new Trainer(m, Fixtures.data(cfg, 1 + rank), Fixtures.options(2));
            t.step();
            new DistributedCheckpoint(new FailingStorage(null), root, 3).save(world, 2, m, t.optimizer(), t.data().consumed(), Map.of());
            t.step();
            IOException e = assertThrows(IOException.class, () -> new DistributedCheckpoint(new FailingStorage("optim-tp00"), root, 3)
                    .save(world, 2, m, t.optimizer(), t.data().consumed(), Map.of()));
            return e.getMessage();
        });
        assertTrue(errors.get(1).contains("injected write failure") && errors.get(1).contains("optim-tp00-of01"), errors.get(1));
        assertTrue(errors.get(0).contains("rank(s) [1] failed to write"), errors.get(0));
        DistributedCheckpoint c = new DistributedCheckpoint(new FailingStorage(null), root, 3);
        assertEquals(List.of(1L), c.committedSteps(), "the failed save committed nothing");
        Transformer m = Fixtures.model(cfg, TensorParallel.none());
        Trainer.Options o = Fixtures.options(2);
        AdamW adam = new AdamW(m.params(), m.kernels(), o.beta1(), o.beta2(), o.eps(), o.weightDecay());
        assertEquals(1, c.resume(new SelfCommunicator(), m, adam, s -> { }).orElseThrow().step(), "previous checkpoint loads");
        assertTrue(Files.list(tmp.resolve("dp")).anyMatch(p -> p.getFileName().toString().startsWith(DistributedCheckpoint.IN_PROGRESS)),
                "the failed save's directory is left until the next save cleans it up");
    }
}
