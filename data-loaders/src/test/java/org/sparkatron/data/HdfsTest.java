package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.data.gpt.DatasetSampleSource;
import org.sparkatron.data.gpt.GptConfig;
import org.sparkatron.data.gpt.GptDataset;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.indexed.IndexedDatasetWriter;
import org.sparkatron.data.io.DataPaths;
import org.sparkatron.data.spark.PrepareJob;
import org.sparkatron.data.spark.PreparedDataset;

/** A real HDFS in-process (hadoop-client-minicluster): ranged reads, refusal of broken pairs, prepare to HDFS. */
@Timeout(180)
class HdfsTest {
    static MiniDFSCluster cluster;
    static String root;
    static Path base;

    @BeforeAll
    static void start() throws Exception {
        base = Files.createTempDirectory("sparkatron-hdfs");
        Configuration conf = new Configuration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.toString());
        cluster = new MiniDFSCluster.Builder(conf).numDataNodes(1).build();
        cluster.waitActive();
        root = "hdfs://127.0.0.1:" + cluster.getNameNodePort();
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

    private static List<int[]> writeDocs(String prefix, int n) throws IOException {
        List<int[]> docs = new ArrayList<>();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.INT32, Map.of())) {
            for (int d = 0; d < n; d++) {
                int[] doc = new int[1 + (d * 7) % 50];
                for (int t = 0; t < doc.length; t++) {
                    doc[t] = 70000 + d * 64 + t;
                }
                w.addDocument(doc);
                docs.add(doc);
            }
        }
        return docs;
    }

    @Test
    void readsAndWritesIndexedDatasetsOnHdfsWithRangedReads() throws Exception {
        String prefix = root + "/data/corpus";
        List<int[]> docs = writeDocs(prefix, 200);
        FileSystem fs = cluster.getFileSystem();
        assertTrue(fs.exists(new org.apache.hadoop.fs.Path("/data/corpus.idx")));
        assertTrue(fs.exists(new org.apache.hadoop.fs.Path("/data/corpus.bin")));
        String local = Files.createTempDirectory("sparkatron-local").resolve("corpus").toString();
        writeDocs(local, 200);
        try (IndexedDataset remote = IndexedDataset.open(prefix, Map.of()); IndexedDataset loc = IndexedDataset.open(local)) {
            assertEquals(200, remote.sequenceCount());
            for (int i = 0; i < docs.size(); i++) {
                assertArrayEquals(docs.get(i), remote.get(i));
            }
            assertArrayEquals(new int[] {70000 + 5 * 64 + 2, 70000 + 5 * 64 + 3}, remote.get(5, 2, 2));
            // The same GPT samples from HDFS as from the local copy.
            GptConfig cfg = GptConfig.of(32, 77);
            DatasetSampleSource a = new DatasetSampleSource(GptDataset.of(remote, 300L, cfg));
            DatasetSampleSource b = new DatasetSampleSource(GptDataset.of(loc, 300L, cfg));
            int[] x = new int[33];
            int[] y = new int[33];
            int n = 0;
            while (a.next(x, 0)) {
                assertTrue(b.next(y, 0));
                assertArrayEquals(y, x, "sample " + n++);
            }
            assertTrue(n >= 300);
        }
    }

    @Test
    void refusesATruncatedBinOnHdfs() throws Exception {
        String prefix = root + "/bad/corpus";
        writeDocs(prefix, 10);
        byte[] bin = DataPaths.readAll(prefix + ".bin", Map.of());
        try (OutputStream out = DataPaths.create(prefix + ".bin", Map.of())) {
            out.write(bin, 0, bin.length - 4);
        }
        IOException e = assertThrows(IOException.class, () -> IndexedDataset.open(prefix, Map.of()));
        assertTrue(e.getMessage().contains(prefix + ".bin") && e.getMessage().contains("truncated"), e.getMessage());
        IOException missing = assertThrows(IOException.class, () -> IndexedDataset.open(root + "/bad/none", Map.of()));
        assertTrue(missing.getMessage().contains("/bad/none.idx"), missing.getMessage());
    }

    @Test
    void prepareWritesShardsToHdfs() throws Exception {
        Path in = Files.createTempFile("sparkatron-prepare", ".txt");
        Files.write(in, PrepareJobTest.docs(30));
        String out = root + "/prepared";
        PrepareJob.Report r = PrepareJob.run(SparkTestSession.get(), PrepareJob.Options.parse(new String[] {"--input",
            in.toString(), "--format", "text", "--tokenizer", "gpt2", "--output", out, "--partitions", "2"}), null);
        assertEquals(30, r.documents());
        PreparedDataset p = PreparedDataset.read(out, Map.of());
        assertEquals(2, p.shardPrefixes().size());
        assertTrue(p.shardPrefixes().get(0).startsWith("hdfs://"));
        List<String> back = PrepareJobTest.readBack(p, org.sparkatron.data.tokenizer.TokenizerSpec.gpt2());
        back.sort(null);
        List<String> expected = new ArrayList<>(PrepareJobTest.docs(30));
        expected.sort(null);
        assertEquals(expected, back);
    }
}
