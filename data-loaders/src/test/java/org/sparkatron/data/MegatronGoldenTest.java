package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Path;
import java.nio.file.Paths;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.data.gpt.BlendedDataset;
import org.sparkatron.data.gpt.Blending;
import org.sparkatron.data.gpt.GptConfig;
import org.sparkatron.data.gpt.GptDataset;
import org.sparkatron.data.gpt.GptIndices;
import org.sparkatron.data.gpt.NumpyRandomState;
import org.sparkatron.data.gpt.SampleDataset;
import org.sparkatron.data.gpt.Splits;
import org.sparkatron.data.indexed.IndexedDataset;

/**
 * Compares with values made by an independent implementation: data-loaders/scripts/megatron_reference.py
 * (struct + NumPy, written from Megatron's published format and semantics) wrote the indexed datasets and
 * golden.json under src/test/resources/megatron. All comparisons are exact: indices are integers and the
 * blending weights are compared bit for bit, since Megatron's counts depend on every bit.
 */
@Timeout(60)
class MegatronGoldenTest {
    static JsonNode golden;
    static Path dir;

    @BeforeAll
    static void load() throws Exception {
        dir = Paths.get(MegatronGoldenTest.class.getResource("/megatron/golden.json").toURI()).getParent();
        golden = new ObjectMapper().readTree(dir.resolve("golden.json").toFile());
    }

    static int[] ints(JsonNode a) {
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.get(i).asInt();
        }
        return out;
    }

    @Test
    void readsFilesWrittenByTheIndependentWriter() throws IOException {
        for (String name : new String[] {"corpus_a", "corpus_b"}) {
            JsonNode seqs = golden.get(name).get("sequences");
            try (IndexedDataset ds = IndexedDataset.open(dir.resolve(name).toString())) {
                assertEquals(seqs.size(), ds.sequenceCount());
                assertEquals(seqs.size(), ds.documentCount());
                for (int i = 0; i < seqs.size(); i++) {
                    assertArrayEquals(ints(seqs.get(i)), ds.get(i), name + " sequence " + i);
                }
            }
        }
    }

    @Test
    void numpyShufflesAreReproducedBitForBit() {
        for (JsonNode s : golden.get("shuffles")) {
            int n = s.get("n").asInt();
            int[] a = new int[n];
            for (int i = 0; i < n; i++) {
                a[i] = i;
            }
            new NumpyRandomState(s.get("seed").asLong()).shuffle(a, 0, n);
            assertArrayEquals(ints(s.get("perm")), a, "seed " + s.get("seed"));
        }
    }

    @Test
    void documentSampleAndShuffleIndicesEqualMegatrons() throws IOException {
        try (IndexedDataset ds = IndexedDataset.open(dir.resolve("corpus_a").toString())) {
            for (JsonNode c : golden.get("cases")) {
                String what = "seq " + c.get("seq_length") + " seed " + c.get("seed") + " samples " + c.get("num_samples");
                GptConfig cfg = GptConfig.of(c.get("seq_length").asInt(), c.get("seed").asLong());
                Long n = c.get("num_samples").isNull() ? null : c.get("num_samples").asLong();
                GptDataset g = new GptDataset(ds, ints(c.get("documents")), n, cfg, c.get("drop_last").asBoolean());
                GptIndices ind = g.indices();
                assertEquals(c.get("epochs").asInt(), ind.epochs, what);
                assertEquals(c.get("separate_final_epoch").asBoolean(), ind.separateFinalEpoch, what);
                assertArrayEquals(ints(c.get("document_index")), ind.documentIndex, what);
                JsonNode si = c.get("sample_index");
                int[] flat = new int[si.size() * 2];
                for (int i = 0; i < si.size(); i++) {
                    flat[2 * i] = si.get(i).get(0).asInt();
                    flat[2 * i + 1] = si.get(i).get(1).asInt();
                }
                assertArrayEquals(flat, ind.sampleIndex, what);
                assertArrayEquals(ints(c.get("shuffle_index")), ind.shuffleIndex, what);
                JsonNode samples = c.get("first_samples");
                for (int i = 0; i < samples.size(); i++) {
                    int[] out = new int[cfg.sampleLength()];
                    g.sample(i, out, 0);
                    assertArrayEquals(ints(samples.get(i)), out, what + " sample " + i);
                }
            }
        }
    }

    @Test
    void splitRangesEqualMegatrons() {
        JsonNode s = golden.get("split");
        double[][] m = Splits.matrix(Splits.parse(s.get("split").asText()));
        for (int i = 0; i < 3; i++) {
            int[] docs = Splits.documents(m, i, 40);
            int beg = s.get("ranges").get(i).get(0).asInt();
            int end = s.get("ranges").get(i).get(1).asInt();
            assertEquals(end - beg, docs.length, "split " + i);
            assertEquals(beg, docs.length == 0 ? beg : docs[0], "split " + i);
        }
    }

    /** A dataset of {@code n} samples whose tokens are its sample number: enough to blend. */
    record Lengthy(long n) implements SampleDataset {
        @Override
        public long length() {
            return n;
        }

        @Override
        public int sampleLength() {
            return 1;
        }

        @Override
        public void sample(long idx, int[] out, int off) {
            out[off] = (int) idx;
        }
    }

    @Test
    void blendingCountsEqualMegatrons() {
        for (JsonNode b : golden.get("blending")) {
            JsonNode raw = b.get("weights");
            double[] w = new double[raw.size()];
            for (int i = 0; i < w.length; i++) {
                w[i] = raw.get(i).asDouble();
            }
            double[] norm = Blending.normalize(w);
            for (int i = 0; i < w.length; i++) {
                assertEquals(Double.doubleToLongBits(b.get("normalized").get(i).asDouble()), Double.doubleToLongBits(norm[i]),
                        "normalized weight " + i + " must match numpy bit for bit");
            }
            long size = b.get("size").asLong();
            long[] target = Blending.sizesPerDataset(norm, size, 0.0);
            long[] buffer = Blending.sizesPerDataset(norm, size, Blending.DEFAULT_SURPLUS);
            long total = 0;
            for (int i = 0; i < w.length; i++) {
                assertEquals(b.get("target").get(i).asLong(), target[i]);
                assertEquals(b.get("buffer").get(i).asLong(), buffer[i]);
                total += target[i];
            }
            // The builder hands BlendedDataset the once-normalized weights; it normalizes them again.
            SampleDataset[] members = new SampleDataset[w.length];
            for (int i = 0; i < w.length; i++) {
                members[i] = new Lengthy(buffer[i]);
            }
            Blending.Indices ind = new BlendedDataset(members, norm, total).indices();
            for (int i = 0; i < w.length; i++) {
                assertEquals(b.get("counts").get(i).asLong(), ind.countsPerDataset()[i], "count of dataset " + i);
            }
            JsonNode first = b.get("first_index");
            for (int i = 0; i < first.size(); i++) {
                assertEquals(first.get(i).asInt(), ind.datasetIndex()[i], "blended sample " + i);
            }
        }
    }
}
