package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.data.gpt.BlendedDataset;
import org.sparkatron.data.gpt.Blending;
import org.sparkatron.data.gpt.DatasetSampleSource;
import org.sparkatron.data.gpt.GptConfig;
import org.sparkatron.data.gpt.GptDataset;
import org.sparkatron.data.gpt.GptDatasetBuilder;
import org.sparkatron.data.gpt.SampleDataset;
import org.sparkatron.data.gpt.SampleMasks;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.indexed.IndexedDatasetWriter;

/** Packing, resume, blending, splits and masks on datasets written here. */
@Timeout(60)
class GptDatasetTest {
    @TempDir
    Path tmp;

    /** Documents d = 0..n-1 of length 3 + d % 5, token t of document d is d * 100 + t: packing is visible. */
    private IndexedDataset corpus(String name, int n) throws Exception {
        return corpus(name, n, 0);
    }

    private IndexedDataset corpus(String name, int n, int base) throws Exception {
        String prefix = tmp.resolve(name).toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.INT32)) {
            for (int d = 0; d < n; d++) {
                int[] doc = new int[3 + d % 5];
                for (int t = 0; t < doc.length; t++) {
                    doc[t] = base + d * 100 + t;
                }
                w.addDocument(doc);
            }
        }
        return IndexedDataset.open(prefix);
    }

    private static List<int[]> drain(DatasetSampleSource s) {
        List<int[]> out = new ArrayList<>();
        int[] buf = new int[s.sampleLength()];
        while (s.next(buf, 0)) {
            out.add(buf.clone());
        }
        return out;
    }

    @Test
    void samplesPackDocumentsAcrossBoundariesAndCoverEveryToken() throws Exception {
        try (IndexedDataset ds = corpus("c", 20)) {
            GptConfig cfg = new GptConfig(8, 3, 1, -1);
            // One epoch, no shuffling effect on coverage: unshuffled via the sample index order check below.
            GptDataset g = GptDataset.of(ds, null, cfg);
            long tokens = ds.totalTokens();
            assertEquals((tokens - 1) / 8, g.length(), "Megatron's (tokens - 1) / seq_len samples in one epoch");
            // Reading samples in sample-index order (undoing the shuffle) must walk the concatenation of the
            // shuffled documents, with consecutive samples sharing exactly one boundary token.
            int[] inverse = new int[(int) g.length()];
            for (int i = 0; i < inverse.length; i++) {
                inverse[g.indices().shuffleIndex[i]] = i;
            }
            List<Integer> stream = new ArrayList<>();
            for (int d : g.indices().documentIndex) {
                for (int t : ds.get(d)) {
                    stream.add(t);
                }
            }
            int[] s = new int[9];
            for (int k = 0; k < inverse.length; k++) {
                g.sample(inverse[k], s, 0);
                for (int j = 0; j < 9; j++) {
                    assertEquals(stream.get(k * 8 + j).intValue(), s[j], "sample " + k + " token " + j);
                }
            }
        }
    }

    @Test
    void sameSeedSameOrderOtherSeedOtherOrder() throws Exception {
        try (IndexedDataset ds = corpus("c", 30)) {
            List<int[]> a = drain(new DatasetSampleSource(GptDataset.of(ds, 50L, GptConfig.of(8, 11))));
            List<int[]> b = drain(new DatasetSampleSource(GptDataset.of(ds, 50L, GptConfig.of(8, 11))));
            List<int[]> c = drain(new DatasetSampleSource(GptDataset.of(ds, 50L, GptConfig.of(8, 12))));
            assertTrue(a.size() >= 50, "enough epochs are added for 50 samples: " + a.size());
            for (int i = 0; i < a.size(); i++) {
                assertArrayEquals(a.get(i), b.get(i));
            }
            boolean differs = false;
            for (int i = 0; i < a.size() && !differs; i++) {
                differs = !Arrays.equals(a.get(i), c.get(i));
            }
            assertTrue(differs, "another seed must give another order");
        }
    }

    @Test
    void resumeContinuesWithExactlyTheNextSample() throws Exception {
        try (IndexedDataset ds = corpus("c", 25)) {
            GptDataset g = GptDataset.of(ds, 40L, GptConfig.of(6, 5));
            for (int[] shape : new int[][] {{0, 1, 1}, {1, 2, 2}, {2, 3, 1}}) {
                List<int[]> full = drain(new DatasetSampleSource(g, shape[0], shape[1], shape[2]));
                for (int cut : new int[] {0, 1, 7, full.size() - 1, full.size()}) {
                    DatasetSampleSource resumed = new DatasetSampleSource(g, shape[0], shape[1], shape[2]);
                    resumed.skip(cut);
                    assertEquals(cut, resumed.consumed());
                    List<int[]> rest = drain(resumed);
                    assertEquals(full.size() - cut, rest.size());
                    for (int i = 0; i < rest.size(); i++) {
                        assertArrayEquals(full.get(cut + i), rest.get(i), "resume at " + cut + " sample " + i);
                    }
                }
                DatasetSampleSource s = new DatasetSampleSource(g, shape[0], shape[1], shape[2]);
                assertThrows(IllegalStateException.class, () -> s.skip(full.size() + 1));
            }
            // Data-parallel ranks together see every sample of complete global batches exactly once.
            long covered = drain(new DatasetSampleSource(g, 0, 2, 2)).size() + drain(new DatasetSampleSource(g, 1, 2, 2)).size();
            assertEquals((g.length() / 4) * 4, covered);
        }
    }

    @Test
    void keptPartialLastSampleIsPaddedAndMasked() throws Exception {
        try (IndexedDataset ds = corpus("c", 7)) {
            GptConfig cfg = GptConfig.of(10, 1);
            int[] docs = new int[7];
            Arrays.setAll(docs, i -> i);
            GptDataset keep = new GptDataset(ds, docs, null, cfg, false);
            GptDataset drop = new GptDataset(ds, docs, null, cfg, true);
            assertEquals(drop.length() + 1, keep.length(), "one partial sample more when kept");
            int pads = 0;
            int[] s = new int[11];
            for (long i = 0; i < keep.length(); i++) {
                keep.sample(i, s, 0);
                int p = (int) Arrays.stream(s).filter(t -> t == -1).count();
                if (p > 0) {
                    pads++;
                    SampleMasks m = SampleMasks.of(s, -2, -1, false, false, false);
                    for (int j = 0; j < 10; j++) {
                        assertEquals(m.labels()[j] == -1 ? 0f : 1f, m.lossMask()[j]);
                    }
                }
            }
            assertEquals(1, pads, "exactly the last sample is padded");
        }
    }

    @Test
    void masksFollowDocumentBoundaries() {
        int eod = 9;
        int[] sample = {1, 2, eod, 3, 4, eod, 5, 6};
        SampleMasks m = SampleMasks.of(sample, eod, -1, true, true, true);
        assertArrayEquals(new int[] {0, 1, 2, 0, 1, 2, 0}, m.positionIds());
        assertArrayEquals(new float[] {1, 1, 0, 1, 1, 0, 1}, m.lossMask());
        assertArrayEquals(new int[] {0, 0, 0, 1, 1, 1, 2}, m.segmentIds());
        assertTrue(m.attends(2, 0));
        assertFalse(m.attends(3, 2), "a token never attends across an end-of-document");
        assertFalse(m.attends(0, 1), "causal");
        SampleMasks plain = SampleMasks.of(sample, eod, -1, false, false, false);
        assertArrayEquals(new int[] {0, 1, 2, 3, 4, 5, 6}, plain.positionIds());
        assertTrue(plain.attends(6, 0));
    }

    @Test
    void blendedSplitsUseMegatronsSizesAndCounts() throws Exception {
        try (IndexedDataset a = corpus("a", 60); IndexedDataset b = corpus("b", 40, 10000)) {
            GptConfig cfg = GptConfig.of(8, 1234);
            SampleDataset[] splits = GptDatasetBuilder.build(List.of(a, b), new double[] {3, 1}, "90,10,0",
                    new Long[] {200L, 20L, 0L}, cfg, Blending.DEFAULT_SURPLUS, true);
            assertNull(splits[2], "an empty split is not built");
            BlendedDataset train = (BlendedDataset) splits[0];
            // sum(ceil(200 * w)) with w = 0.75, 0.25.
            assertEquals(200, train.length());
            assertArrayEquals(new long[] {150, 50}, train.indices().countsPerDataset());
            // Validation documents are disjoint from training documents: tokens encode their document id.
            int[] s = new int[9];
            for (long i = 0; i < splits[1].length(); i++) {
                splits[1].sample(i, s, 0);
                for (int t : s) {
                    boolean ok = t >= 10000 ? (t - 10000) / 100 >= 36 : t / 100 >= 54;
                    assertTrue(ok, "validation token " + t + " comes from a training document");
                }
            }
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> GptDatasetBuilder.build(
                    List.of(a, b), new double[] {1, 1, 1}, "1", new Long[] {10L, null, null}, cfg, 0.005, true));
            assertTrue(e.getMessage().contains("3 weights"), e.getMessage());
        }
    }
}
