package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.indexed.IndexedDatasetWriter;

/** The writer against the independent writer and reader, and refusal of broken pairs. */
@Timeout(60)
class IndexedDatasetTest {
    @TempDir
    Path tmp;

    static Path resources() throws Exception {
        return Paths.get(IndexedDatasetTest.class.getResource("/megatron/golden.json").toURI()).getParent();
    }

    static int[][] goldenSequences(String name) throws Exception {
        JsonNode seqs = new ObjectMapper().readTree(resources().resolve("golden.json").toFile()).get(name).get("sequences");
        int[][] out = new int[seqs.size()][];
        for (int i = 0; i < out.length; i++) {
            out[i] = MegatronGoldenTest.ints(seqs.get(i));
        }
        return out;
    }

    @Test
    void writesTheSameBytesAsTheIndependentWriter() throws Exception {
        for (String name : new String[] {"corpus_a", "corpus_b"}) {
            IndexedDType dtype = name.equals("corpus_a") ? IndexedDType.UINT16 : IndexedDType.INT32;
            String prefix = tmp.resolve(name).toString();
            try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, dtype)) {
                for (int[] doc : goldenSequences(name)) {
                    w.addDocument(doc);
                }
            }
            for (String ext : new String[] {".idx", ".bin"}) {
                assertArrayEquals(Files.readAllBytes(resources().resolve(name + ext)), Files.readAllBytes(Paths.get(prefix + ext)),
                        name + ext + " must be byte-for-byte what the reference writer produced");
            }
        }
    }

    @Test
    void theIndependentReaderAcceptsOurFiles() throws Exception {
        Path script = Paths.get("scripts/megatron_reference.py").toAbsolutePath();
        Assumptions.assumeTrue(Files.isExecutable(Paths.get("/usr/bin/python3")) && Files.exists(script),
                "needs /usr/bin/python3 to run the independent reader");
        String prefix = tmp.resolve("multi").toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.INT32)) {
            w.addSequence(new int[] {1, 2, 3}, 0, 3);
            w.addSequence(new int[] {70000}, 0, 1);
            w.endDocument();
            w.addDocument(new int[] {5, 6});
            w.addDocument(new int[0]);
        }
        Process p = new ProcessBuilder("/usr/bin/python3", script.toString(), "read", prefix).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        assertTrue(p.waitFor(30, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), out);
        JsonNode j = new ObjectMapper().readTree(out);
        assertEquals(4, j.get("dtype_code").asInt());
        assertEquals("[3,1,2,0]", j.get("lengths").toString());
        assertEquals("[0,12,16,24]", j.get("pointers").toString());
        assertEquals("[0,2,3,4]", j.get("document_indices").toString());
        assertEquals("[[1,2,3],[70000],[5,6],[]]", j.get("sequences").toString());
    }

    @Test
    void readsSlicesAndRefusesTokensThatDoNotFit() throws Exception {
        String prefix = tmp.resolve("s").toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.UINT16)) {
            w.addDocument(new int[] {10, 65535, 0, 7});
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> w.addDocument(new int[] {65536}));
            assertTrue(e.getMessage().contains("65536") && e.getMessage().contains("UINT16"), e.getMessage());
        }
        try (IndexedDataset ds = IndexedDataset.open(prefix)) {
            assertArrayEquals(new int[] {65535, 0}, ds.get(0, 1, 2));
            assertEquals(4, ds.totalTokens());
            assertThrows(IndexOutOfBoundsException.class, () -> ds.get(0, 3, 2));
        }
    }

    private String writeSmall(String name) throws IOException {
        String prefix = tmp.resolve(name).toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.UINT16)) {
            w.addDocument(new int[] {1, 2, 3});
            w.addDocument(new int[] {4, 5});
        }
        return prefix;
    }

    private void assertRefused(String prefix, String file, String problem) {
        IOException e = assertThrows(IOException.class, () -> IndexedDataset.open(prefix).close());
        assertTrue(e.getMessage().contains(file) && e.getMessage().contains(problem),
                "message must name " + file + " and '" + problem + "': " + e.getMessage());
    }

    private static void poke(String file, long pos, byte[] bytes) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(file, "rw")) {
            f.seek(pos);
            f.write(bytes);
        }
    }

    @Test
    void refusesCorruptTruncatedAndMismatchedPairs() throws Exception {
        String p = writeSmall("magic");
        poke(p + ".idx", 0, new byte[] {'X'});
        assertRefused(p, p + ".idx", "bad magic");

        p = writeSmall("version");
        poke(p + ".idx", 9, new byte[] {2});
        assertRefused(p, p + ".idx", "version 2");

        p = writeSmall("dtype");
        poke(p + ".idx", 17, new byte[] {42});
        assertRefused(p, p + ".idx", "unknown dtype code 42");

        p = writeSmall("float");
        poke(p + ".idx", 17, new byte[] {7});
        assertRefused(p, p + ".idx", "FLOAT32");

        p = writeSmall("truncidx");
        try (RandomAccessFile f = new RandomAccessFile(p + ".idx", "rw")) {
            f.setLength(f.length() - 8);
        }
        assertRefused(p, p + ".idx", "truncated index");

        p = writeSmall("header");
        try (RandomAccessFile f = new RandomAccessFile(p + ".idx", "rw")) {
            f.setLength(20);
        }
        assertRefused(p, p + ".idx", "truncated index");

        p = writeSmall("truncbin");
        try (RandomAccessFile f = new RandomAccessFile(p + ".bin", "rw")) {
            f.setLength(f.length() - 2);
        }
        assertRefused(p, p + ".bin", "truncated");

        p = writeSmall("pointer");
        poke(p + ".idx", 34 + 8 + 8, new byte[] {9}); // pointer of sequence 1
        assertRefused(p, p + ".idx", "pointer of sequence 1");

        // An index paired with another dataset's .bin.
        String a = writeSmall("pairA");
        String b = tmp.resolve("pairB").toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(b, IndexedDType.UINT16)) {
            w.addDocument(new int[] {1, 2, 3, 4, 5, 6, 7});
        }
        Files.copy(Paths.get(b + ".bin"), Paths.get(a + ".bin"), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        assertRefused(a, a + ".bin", "does not match");

        p = writeSmall("nobin");
        Files.delete(Paths.get(p + ".bin"));
        assertRefused(p, p + ".bin", "no such file");
    }
}
