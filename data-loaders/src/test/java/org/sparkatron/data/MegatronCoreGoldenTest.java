package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.data.gpt.BlendedDataset;
import org.sparkatron.data.gpt.Blending;
import org.sparkatron.data.gpt.GptConfig;
import org.sparkatron.data.gpt.GptDataset;
import org.sparkatron.data.gpt.GptDatasetBuilder;
import org.sparkatron.data.gpt.SampleDataset;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.indexed.IndexedDatasetWriter;
import org.sparkatron.data.tokenizer.Gpt2Tokenizer;
import org.sparkatron.data.tokenizer.HfTokenizer;
import org.sparkatron.data.tokenizer.TextTokenizer;

/**
 * Against values made by Megatron Core itself: data-loaders/scripts/make_megatron_fixtures.sh installs
 * the pinned megatron-core (0.16.1) from PyPI, builds its C++ helpers from helpers.cpp, and runs its
 * IndexedDatasetBuilder, BlendedMegatronDatasetBuilder, GPTDataset, BlendedDataset and HuggingFaceTokenizer
 * to write src/test/resources/megatron_core (committed; no Python here). Every comparison is exact.
 */
@Timeout(60)
class MegatronCoreGoldenTest {
    static JsonNode golden;
    static Path dir;

    @TempDir
    Path tmp;

    @BeforeAll
    static void load() throws Exception {
        dir = Paths.get(MegatronCoreGoldenTest.class.getResource("/megatron_core/golden.json").toURI()).getParent();
        golden = new ObjectMapper().readTree(dir.resolve("golden.json").toFile());
        assertEquals("0.16.1", golden.get("megatron_core").asText());
    }

    static int[] ints(JsonNode a) {
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.get(i).asInt();
        }
        return out;
    }

    static double[] doubles(JsonNode a) {
        if (a == null || a.isNull()) {
            return null;
        }
        double[] out = new double[a.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.get(i).asDouble();
        }
        return out;
    }

    static Long[] sizes(JsonNode a) {
        Long[] out = new Long[3];
        for (int i = 0; i < 3; i++) {
            out[i] = a.get(i).isNull() ? null : a.get(i).asLong();
        }
        return out;
    }

    static int[] sample(SampleDataset d, long i) throws Exception {
        int[] out = new int[d.sampleLength()];
        d.sample(i, out, 0);
        return out;
    }

    static List<IndexedDataset> open(List<String> names) throws Exception {
        List<IndexedDataset> out = new ArrayList<>();
        for (String n : names) {
            out.add(IndexedDataset.open(dir.resolve(n).toString()));
        }
        return out;
    }

    static void closeAll(List<IndexedDataset> ds) throws Exception {
        for (IndexedDataset d : ds) {
            d.close();
        }
    }

    @Test
    void readsAndWritesEveryDtypeAsMegatronsBuilder() throws Exception {
        for (JsonNode c : golden.get("dtypes")) {
            String prefix = c.get("prefix").asText();
            IndexedDType dtype = IndexedDType.valueOf(prefix.substring("dtype_".length()).toUpperCase(Locale.ROOT));
            assertEquals(c.get("code").asInt(), dtype.code, prefix);
            List<int[]> sequences = new ArrayList<>();
            Path ours = tmp.resolve(prefix);
            try (IndexedDatasetWriter w = new IndexedDatasetWriter(ours.toString(), dtype)) {
                for (JsonNode doc : c.get("documents")) {
                    for (JsonNode seq : doc) {
                        int[] ids = ints(seq);
                        sequences.add(ids);
                        w.addSequence(ids, 0, ids.length);
                    }
                    w.endDocument(); // an empty document: a document entry, no sequence
                }
            }
            for (String ext : new String[] {".idx", ".bin"}) {
                assertArrayEquals(Files.readAllBytes(dir.resolve(prefix + ext)), Files.readAllBytes(Paths.get(ours + ext)),
                        prefix + ext + " must be byte for byte what Megatron's IndexedDatasetBuilder wrote");
            }
            try (IndexedDataset ds = IndexedDataset.open(dir.resolve(prefix).toString())) {
                assertEquals(dtype, ds.dtype());
                assertEquals(sequences.size(), ds.sequenceCount(), prefix);
                assertEquals(c.get("documents").size(), ds.documentCount(), prefix);
                JsonNode docIdx = c.get("document_indices");
                for (int i = 0; i < docIdx.size(); i++) {
                    assertEquals(docIdx.get(i).asLong(), ds.documentIndex(i), prefix + " document index " + i);
                }
                for (int i = 0; i < sequences.size(); i++) {
                    assertArrayEquals(sequences.get(i), ds.get(i), prefix + " sequence " + i);
                }
            }
        }
    }

    @Test
    void singleDatasetIndicesAndSamplesEqualMegatrons() throws Exception {
        try (IndexedDataset ds = IndexedDataset.open(dir.resolve("corpus_a").toString())) {
            for (JsonNode c : golden.get("single")) {
                String what = "seq " + c.get("seq_length") + " seed " + c.get("seed") + " split " + c.get("split") + "/"
                        + c.get("split_index") + " sizes " + c.get("sizes");
                GptConfig cfg = GptConfig.of(c.get("seq_length").asInt(), c.get("seed").asLong());
                SampleDataset[] built = GptDatasetBuilder.build(List.of(ds), null, c.get("split").asText(), sizes(c.get("sizes")),
                        cfg, Blending.DEFAULT_SURPLUS, c.get("drop_last_partial_validation_sequence").asBoolean());
                GptDataset g = assertInstanceOf(GptDataset.class, built[c.get("split_index").asInt()], what);
                assertArrayEquals(ints(c.get("document_index")), g.indices().documentIndex, what + ": document index");
                assertArrayEquals(ints(c.get("sample_index")), g.indices().sampleIndex, what + ": sample index");
                assertArrayEquals(ints(c.get("shuffle_index")), g.indices().shuffleIndex, what + ": shuffle index");
                JsonNode samples = c.get("samples");
                for (int i = 0; i < samples.size(); i++) {
                    assertArrayEquals(ints(samples.get(i)), sample(g, i), what + ": sample " + i);
                }
            }
        }
    }

    @Test
    void blendWeightsAreNormalizedTwiceBitForBit() {
        for (JsonNode c : golden.get("blends")) {
            double[] raw = doubles(c.get("weights"));
            if (raw == null) {
                continue;
            }
            double[] once = Blending.normalize(raw);
            double[] twice = Blending.normalize(once);
            for (int i = 0; i < raw.length; i++) {
                assertEquals(Double.doubleToLongBits(c.get("normalized_once").get(i).asDouble()), Double.doubleToLongBits(once[i]));
                assertEquals(Double.doubleToLongBits(c.get("normalized_twice").get(i).asDouble()), Double.doubleToLongBits(twice[i]));
            }
        }
    }

    @Test
    void blendedSampleOrderEqualsMegatrons() throws Exception {
        for (JsonNode c : golden.get("blends")) {
            List<IndexedDataset> ds = open(List.of("corpus_a", "corpus_b", "corpus_c").subList(0, c.get("datasets").asInt()));
            try {
                String what = "weights " + c.get("weights") + " split " + c.get("split") + " sizes " + c.get("sizes");
                SampleDataset[] built = GptDatasetBuilder.build(ds, doubles(c.get("weights")), c.get("split").asText(),
                        sizes(c.get("sizes")), GptConfig.of(c.get("seq_length").asInt(), c.get("seed").asLong()),
                        Blending.DEFAULT_SURPLUS, true);
                for (int s = 0; s < 3; s++) {
                    JsonNode m = c.get("splits").get(s);
                    if (m.isNull()) {
                        assertNull(built[s], what + " split " + s);
                        continue;
                    }
                    String at = what + " split " + s;
                    BlendedDataset b = assertInstanceOf(BlendedDataset.class, built[s], at);
                    assertEquals(m.get("size").asLong(), b.length(), at + ": size");
                    String expected = m.get("dataset_index").asText();
                    short[] index = b.indices().datasetIndex();
                    int differing = 0;
                    int first = -1;
                    long sampleIndexSum = 0;
                    for (int i = 0; i < index.length; i++) {
                        if (index[i] != expected.charAt(i) - '0') {
                            differing++;
                            first = first < 0 ? i : first;
                        }
                        sampleIndexSum += b.indices().datasetSampleIndex()[i];
                    }
                    assertEquals(0, differing, at + ": " + differing + " of " + index.length
                            + " blended samples come from another dataset than Megatron's, the first at " + first);
                    assertEquals(m.get("dataset_sample_index_sum").asLong(), sampleIndexSum, at);
                    double[] w = b.weights();
                    for (int d = 0; d < w.length; d++) {
                        assertEquals(Double.doubleToLongBits(m.get("weights").get(d).asDouble()), Double.doubleToLongBits(w[d]),
                                at + ": weight " + d + " handed to build_blending_indices");
                        assertEquals(m.get("dataset_lengths").get(d).asLong(), b.dataset(d).length(), at + ": length of member " + d);
                        assertEquals(m.get("counts").get(d).asLong(), b.indices().countsPerDataset()[d], at + ": count of member " + d);
                    }
                    JsonNode samples = m.get("samples");
                    long step = Math.max(1, b.length() / 7);
                    for (int j = 0; j < samples.size(); j++) {
                        assertArrayEquals(ints(samples.get(j)), sample(b, j * step), at + ": sample " + j * step);
                    }
                }
            } finally {
                closeAll(ds);
            }
        }
    }

    @Test
    void refusesWhatMegatronRefuses() throws Exception {
        for (JsonNode c : golden.get("refused")) {
            assertTrue(c.get("megatron_error").asText().startsWith("AssertionError"), c.toString());
            List<String> names = new ArrayList<>();
            c.get("datasets").forEach(n -> names.add(n.asText()));
            List<IndexedDataset> ds = open(names);
            try {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> GptDatasetBuilder.build(ds,
                        doubles(c.get("weights")), c.get("split").asText(), sizes(c.get("sizes")), GptConfig.of(16, 1),
                        Blending.DEFAULT_SURPLUS, true), c.get("what").asText());
                assertTrue(e.getMessage().contains("positive"), e.getMessage());
            } finally {
                closeAll(ds);
            }
        }
    }

    /** Megatron's preprocess_data encoding: tokenizer ids, end-of-document only after a non-empty document. */
    @Test
    void tokenizersEncodeDocumentsAsMegatronsPreprocessData() throws Exception {
        List<String> texts = new ArrayList<>();
        for (String line : Files.readAllLines(dir.resolve("prepare_input.jsonl"))) {
            texts.add(new ObjectMapper().readTree(line).get("text").asText());
        }
        for (JsonNode c : golden.get("prepare")) {
            String name = c.get("tokenizer").asText();
            try (TextTokenizer tok = name.equals("gpt2") ? new Gpt2Tokenizer() : new HfTokenizer(Files.readAllBytes(
                    Paths.get(getClass().getResource("/tokenizer/tiny_bpe_tokenizer.json").toURI())), null, false)) {
                assertEquals(c.get("eod").asInt(), tok.eodId(), name);
                assertEquals(c.get("vocab_size").asInt(), tok.vocabSize(), name);
                for (int i = 0; i < texts.size(); i++) {
                    assertArrayEquals(ints(c.get("documents").get(i)), tok.encodeDocument(texts.get(i)),
                            name + " document " + i + ": \"" + texts.get(i) + "\"");
                }
            }
        }
    }
}
