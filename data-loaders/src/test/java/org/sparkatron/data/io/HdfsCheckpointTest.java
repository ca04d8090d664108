package org.sparkatron.data.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.checkpoint.CheckpointMetadata;
import org.sparkatron.checkpoint.CheckpointStorage;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.InProcessRendezvous;
import org.sparkatron.comm.tcp.TcpCommunicator;
import org.sparkatron.comm.tcp.TcpOptions;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.precision.Precision;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * {@link HadoopCheckpointStorage} on a real HDFS (in-process MiniDFSCluster): two tensor-parallel ranks
 * train and save two checkpoints to hdfs://, the root lists exactly the committed ones, a fresh pair of ranks resumes
 * the newest bitwise (weights, AdamW moments, step); after the newest one's shard is truncated on HDFS,
 * loading it is refused naming the file, and automatic resume falls back to the previous checkpoint.
 */
@Timeout(180)
class HdfsCheckpointTest {
    private static final byte[] SECRET = "hdfs-ckpt-test-secret-0123456789ab".getBytes(StandardCharsets.UTF_8);
    static MiniDFSCluster cluster;
    static java.nio.file.Path base;
    static String root;

    @BeforeAll
    static void start() throws Exception {
        base = Files.createTempDirectory("sparkatron-hdfs-ckpt");
        Configuration conf = new Configuration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.toString());
        cluster = new MiniDFSCluster.Builder(conf).numDataNodes(1).build();
        cluster.waitActive();
        root = "hdfs://127.0.0.1:" + cluster.getNameNodePort() + "/ckpt/run1";
    }

    @AfterAll
    static void stop() throws IOException {
        if (cluster != null) {
            cluster.shutdown();
        }
        try (var s = Files.walk(base)) {
            s.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
    }

    private static ModelConfig config() {
        return ModelConfig.fromJson(new com.fasterxml.jackson.databind.ObjectMapper().createObjectNode().put("model_type", "gpt2")
                .put("n_layer", 2).put("n_embd", 32).put("n_head", 2).put("n_positions", 16).put("vocab_size", 70));
    }

    interface Body<T> {
        T run(int rank, Communicator world) throws Exception;
    }

    /** Two ranks as threads, each with its own loopback TCP communicator; the first exception is rethrown. */
    static <T> List<T> ranks(Body<T> body) throws Exception {
        InProcessRendezvous rv = new InProcessRendezvous(2, 20_000);
        TcpOptions opts = TcpOptions.loopback().withTimeouts(20_000, 30_000);
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try {
            List<Future<T>> fs = new ArrayList<>();
            for (int r = 0; r < 2; r++) {
                int rank = r;
                fs.add(pool.submit(() -> {
                    try (TcpCommunicator c = TcpCommunicator.create(rank, 2, rv.forRank(rank), SECRET, opts)) {
                        try {
                            return body.run(rank, c);
                        } catch (Throwable t) {
                            c.abort("rank " + rank + " failed: " + t);
                            throw t;
                        }
                    }
                }));
            }
            List<T> out = new ArrayList<>();
            for (Future<T> f : fs) {
                try {
                    out.add(f.get(90, TimeUnit.SECONDS));
                } catch (java.util.concurrent.ExecutionException e) {
                    throw e.getCause() instanceof Exception x ? x : new RuntimeException(e.getCause());
                }
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    /** A TP rank's trainer on fixed random token rows (every rank of the group sees the same samples). */
    private static Trainer trainer(Transformer m) {
        java.util.SplittableRandom rng = new java.util.SplittableRandom(3);
        List<int[]> rows = new ArrayList<>();
        for (int i = 0; i < 16; i++) {
            rows.add(rng.ints(17, 0, 70).toArray());
        }
        return new Trainer(m, PackedSamples.perSequence(rows, 0),
                new Trainer.Options(2, 1, LrSchedule.constant(1e-2), 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f));
    }

    private static float[] all(org.sparkatron.tensor.Tensor t) {
        float[] a = new float[(int) t.numel()];
        t.floats().get(0, a);
        return a;
    }

    @Test
    void savesListsResumesAndRefusesATruncatedCheckpointOnHdfs() throws Exception {
        ModelConfig cfg = config();
        CheckpointStorage storage = HadoopCheckpointStorage.forPath(root, Map.of());
        assertTrue(storage instanceof HadoopCheckpointStorage, "hdfs:// goes through Hadoop");
        // save at steps 2 and 4 (TP 2: each rank writes its own shard files to HDFS); remember step 2 and 4 state
        List<float[][]> saved = ranks((rank, world) -> {
            Transformer m = new Transformer(cfg, new RankContext(new CpuDevice(), new TensorParallel(world, false), Precision.FP32));
            m.initialize(5);
            Trainer tr = trainer(m);
            AdamW adam = tr.optimizer();
            DistributedCheckpoint dc = new DistributedCheckpoint(storage, root, 2);
            tr.step();
            tr.step();
            dc.save(world, 1, m, adam, tr.data().consumed(), Map.of());
            float[][] at2 = {all(m.params().weights()), all(adam.firstMoment()), all(adam.secondMoment())};
            tr.step();
            tr.step();
            dc.save(world, 1, m, adam, tr.data().consumed(), Map.of());
            return new float[][] {at2[0], at2[1], at2[2], all(m.params().weights()), all(adam.firstMoment()), all(adam.secondMoment())};
        });
        DistributedCheckpoint dc = new DistributedCheckpoint(storage, root, 2);
        assertEquals(List.of(4L, 2L), dc.committedSteps(), "newest first, both committed");
        FileSystem fs = cluster.getFileSystem();
        Path step4 = new Path("/ckpt/run1/" + DistributedCheckpoint.dirName(4));
        assertTrue(fs.exists(new Path(step4, "metadata.json")));
        assertTrue(fs.exists(new Path(step4, "model-tp01-of02.safetensors")), "rank 1's shard on HDFS");
        assertFalse(fs.listStatus(new Path("/ckpt/run1")).length > 2, "no leftovers of the saves");

        // resume: fresh ranks (other seed) restore step 4 exactly
        List<Long> resumed = ranks((rank, world) -> {
            Transformer m = new Transformer(cfg, new RankContext(new CpuDevice(), new TensorParallel(world, false), Precision.FP32));
            m.initialize(99);
            AdamW adam = new AdamW(m.params(), m.kernels(), 0.9f, 0.95f, 1e-8f, 0.1f);
            CheckpointMetadata meta = new DistributedCheckpoint(storage, root, 2).resume(world, m, adam, msg -> { }).orElseThrow();
            float[][] want = saved.get(rank);
            assertArrayEquals(want[3], all(m.params().weights()), "rank " + rank + " weights");
            assertArrayEquals(want[4], all(adam.firstMoment()), "rank " + rank + " m");
            assertArrayEquals(want[5], all(adam.secondMoment()), "rank " + rank + " v");
            assertEquals(8, meta.consumedSamples(), "4 steps x 2 samples");
            return adam.step();
        });
        assertEquals(List.of(4L, 4L), resumed);

        // truncate rank 1's model shard of step 4 on HDFS
        Path shard = new Path(step4, "model-tp01-of02.safetensors");
        byte[] bytes;
        try (InputStream in = fs.open(shard)) {
            bytes = in.readAllBytes();
        }
        try (OutputStream out = fs.create(shard, true)) {
            out.write(bytes, 0, bytes.length - 100);
        }
        List<String> logs = java.util.Collections.synchronizedList(new ArrayList<>());
        ranks((rank, world) -> {
            Transformer m = new Transformer(cfg, new RankContext(new CpuDevice(), new TensorParallel(world, false), Precision.FP32));
            AdamW adam = new AdamW(m.params(), m.kernels(), 0.9f, 0.95f, 1e-8f, 0.1f);
            DistributedCheckpoint d = new DistributedCheckpoint(storage, root, 2);
            if (rank == 1) { // a direct load of the damaged checkpoint is refused, naming the file
                IOException e = assertThrows(IOException.class, () -> d.load(d.dir(4), m, adam));
                assertTrue(e.getMessage().contains("model-tp01-of02.safetensors") && e.getMessage().contains("truncated"), e.getMessage());
            }
            CheckpointMetadata meta = d.resume(world, m, adam, logs::add).orElseThrow();
            assertEquals(2, meta.step(), "fell back to the previous checkpoint");
            float[][] want = saved.get(rank);
            assertArrayEquals(want[0], all(m.params().weights()), "rank " + rank + " weights of step 2");
            assertArrayEquals(want[1], all(adam.firstMoment()));
            assertArrayEquals(want[2], all(adam.secondMoment()));
            return null;
        });
        assertTrue(logs.stream().anyMatch(l -> l.contains(DistributedCheckpoint.dirName(4)) && l.contains("falling back")), logs.toString());
    }
}
