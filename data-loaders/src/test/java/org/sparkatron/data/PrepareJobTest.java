package org.sparkatron.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.data.gpt.DatasetSampleSource;
import org.sparkatron.data.gpt.GptConfig;
import org.sparkatron.data.gpt.GptDataset;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.spark.PrepareJob;
import org.sparkatron.data.spark.PreparedDataset;
import org.sparkatron.data.tokenizer.Gpt2Tokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;

/** The prepare job end to end on a local SparkSession: text, JSON lines and Parquet in, shards out. */
@Timeout(180)
class PrepareJobTest {
    @TempDir
    Path tmp;

    static List<String> docs(int n) {
        List<String> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            out.add("Document " + i + " says: the quick brown fox " + "jumps ".repeat(i % 7) + "over the dog.");
        }
        return out;
    }

    /** Decodes every document of every shard, in shard order, checking each ends with the end-of-document. */
    static List<String> readBack(PreparedDataset p, TokenizerSpec spec) throws Exception {
        List<String> out = new ArrayList<>();
        try (var tok = spec.create()) {
            for (IndexedDataset ds : p.open(Map.of())) {
                try (ds) {
                    for (int i = 0; i < ds.sequenceCount(); i++) {
                        int[] ids = ds.get(i);
                        assertEquals(p.eodId(), ids[ids.length - 1]);
                        out.add(tok.decode(java.util.Arrays.copyOf(ids, ids.length - 1)));
                    }
                }
            }
        }
        return out;
    }

    @Test
    void jsonLinesToShardsAndManifest() throws Exception {
        SparkSession spark = SparkTestSession.get();
        List<String> docs = docs(57);
        StringBuilder jsonl = new StringBuilder();
        for (String d : docs) {
            jsonl.append("{\"id\": 1, \"body\": \"").append(d).append("\"}\n");
        }
        Path in = tmp.resolve("in.jsonl");
        Files.writeString(in, jsonl);
        String out = tmp.resolve("out").toString();
        ByteArrayOutputStream progress = new ByteArrayOutputStream();
        PrepareJob.Report r = PrepareJob.run(spark, PrepareJob.Options.parse(new String[] {"--input", in.toString(),
            "--format", "jsonl", "--text-column", "body", "--tokenizer", "gpt2", "--output", out, "--partitions", "3"}),
                new PrintStream(progress));
        assertEquals(57, r.documents());
        assertEquals(3, r.shards());
        PreparedDataset p = PreparedDataset.read(out, Map.of());
        assertEquals(57, p.documents());
        assertEquals(r.tokens(), p.tokens());
        assertEquals(Gpt2Tokenizer.EOD, p.eodId());
        assertEquals("uint16", p.dtype());
        long sum = 0;
        for (long t : p.shardTokens()) {
            sum += t;
        }
        assertEquals(p.tokens(), sum);
        List<String> back = readBack(p, TokenizerSpec.gpt2());
        back.sort(null);
        List<String> expected = new ArrayList<>(docs);
        expected.sort(null);
        assertEquals(expected, back, "every document comes back exactly once (repartition shuffles the order)");
        // The prepared shards feed the GPT dataset directly.
        try (IndexedDataset first = IndexedDataset.open(p.shardPrefixes().get(0))) {
            assertEquals(IndexedDType.UINT16, first.dtype());
            DatasetSampleSource src = new DatasetSampleSource(GptDataset.of(first, null, GptConfig.of(16, 1)));
            int[] s = new int[17];
            assertTrue(src.next(s, 0));
        }
        // An existing output is refused unless --overwrite.
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PrepareJob.run(spark,
                PrepareJob.Options.parse(new String[] {"--input", in.toString(), "--format", "jsonl", "--text-column", "body",
                    "--tokenizer", "gpt2", "--output", out}), null));
        assertTrue(e.getMessage().contains("--overwrite"), e.getMessage());
    }

    @Test
    void textAndParquetWithATokenizerJson() throws Exception {
        SparkSession spark = SparkTestSession.get();
        List<String> docs = docs(20);
        Path txt = tmp.resolve("in.txt");
        Files.write(txt, docs);
        String tokJson = Path.of(getClass().getResource("/tokenizer/tiny_bpe_tokenizer.json").toURI()).toString();
        String out1 = tmp.resolve("o1").toString();
        PrepareJob.run(spark, PrepareJob.Options.parse(new String[] {"--input", txt.toString(), "--format", "text",
            "--tokenizer", tokJson, "--output", out1}), null);
        PreparedDataset p1 = PreparedDataset.read(out1, Map.of());
        TokenizerSpec spec = TokenizerSpec.parse(tokJson, null, Map.of());
        assertEquals(docs, readBack(p1, spec), "a single text file keeps its line order across shards");

        Path pq = tmp.resolve("in.parquet");
        spark.read().text(txt.toString()).withColumnRenamed("value", "text").write().parquet(pq.toString());
        String out2 = tmp.resolve("o2").toString();
        PrepareJob.Report r = PrepareJob.run(spark, PrepareJob.Options.parse(new String[] {"--input", pq.toString(),
            "--format", "parquet", "--tokenizer", "gpt2", "--output", out2}), null);
        assertEquals(20, r.documents());
        List<String> back = readBack(PreparedDataset.read(out2, Map.of()), TokenizerSpec.gpt2());
        back.sort(null);
        List<String> expected = new ArrayList<>(docs);
        expected.sort(null);
        assertEquals(expected, back);
    }

    /**
     * The same documents (empty ones and literal end-of-text markers among them) as JSON lines and as
     * text lines give byte for byte the .bin/.idx that Megatron's preprocess_data encoding wrote with its
     * Hugging Face tokenizer path (fixtures of MegatronCoreGoldenTest), for GPT-2 and a tokenizer.json.
     */
    @Test
    void shardsEqualMegatronsPreprocessData() throws Exception {
        SparkSession spark = SparkTestSession.get();
        Path golden = Path.of(getClass().getResource("/megatron_core/golden.json").toURI()).getParent();
        String tinyJson = Path.of(getClass().getResource("/tokenizer/tiny_bpe_tokenizer.json").toURI()).toString();
        for (String format : new String[] {"jsonl", "text"}) {
            for (String tokenizer : new String[] {"gpt2", tinyJson}) {
                String expected = tokenizer.equals("gpt2") ? "prepare_gpt2" : "prepare_tiny";
                String out = tmp.resolve(format + "-" + expected).toString();
                String input = golden.resolve(format.equals("text") ? "prepare_input.txt" : "prepare_input.jsonl").toString();
                PrepareJob.Report r = PrepareJob.run(spark, PrepareJob.Options.parse(new String[] {"--input", input,
                    "--format", format, "--tokenizer", tokenizer, "--output", out}), null);
                assertEquals(1, r.shards(), format + " " + expected);
                assertEquals(12, r.documents(), format + " " + expected);
                for (String ext : new String[] {".idx", ".bin"}) {
                    assertArrayEquals(Files.readAllBytes(golden.resolve(expected + ext)),
                            Files.readAllBytes(Path.of(out, "shard-00000" + ext)),
                            format + " with " + expected + ": shard" + ext + " must be byte for byte Megatron's");
                }
            }
        }
    }

    @Test
    void badInputIsRefusedClearly() throws Exception {
        SparkSession spark = SparkTestSession.get();
        Path in = tmp.resolve("x.jsonl");
        Files.writeString(in, "{\"content\": \"a\"}\n");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PrepareJob.run(spark,
                PrepareJob.Options.parse(new String[] {"--input", in.toString(), "--format", "jsonl", "--tokenizer", "gpt2",
                    "--output", tmp.resolve("o").toString()}), null));
        assertTrue(e.getMessage().contains("'text'") && e.getMessage().contains("content"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PrepareJob.Options.parse(new String[] {"--input", "x"}));
        assertTrue(e.getMessage().contains("required"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PrepareJob.Options.parse(new String[] {"--input", "x",
            "--format", "csv", "--tokenizer", "gpt2", "--output", "o"}));
        assertTrue(e.getMessage().contains("csv"), e.getMessage());
        Exception missing = assertThrows(Exception.class, () -> PrepareJob.run(spark, PrepareJob.Options.parse(
                new String[] {"--input", tmp.resolve("nope.jsonl").toString(), "--format", "jsonl", "--tokenizer", "gpt2",
                    "--output", tmp.resolve("o3").toString()}), null));
        assertTrue(missing.getMessage().contains("nope.jsonl"), missing.getMessage());
        Exception noTok = assertThrows(Exception.class, () -> PrepareJob.run(spark, PrepareJob.Options.parse(
                new String[] {"--input", in.toString(), "--format", "jsonl", "--tokenizer", "/no/tok.json",
                    "--output", tmp.resolve("o4").toString()}), null));
        assertTrue(noTok.getMessage().contains("/no/tok.json"), noTok.getMessage());
    }

    /** Issue 22: malformed JSON lines were dropped without a word; now they are counted and refused past a limit. */
    @Test
    void malformedJsonLinesAreCountedAndRefusedUnlessAllowed() throws Exception {
        SparkSession spark = SparkTestSession.get();
        Path in = tmp.resolve("mixed.jsonl");
        StringBuilder sb = new StringBuilder();
        for (String d : docs(5)) {
            sb.append("{\"text\": \"").append(d).append("\"}\n");
        }
        sb.append("{not json at all\n").append("{\"text\": \"unterminated\n").append("{\"other\": 1}\n");
        Files.writeString(in, sb);
        String[] args = {"--input", in.toString(), "--format", "jsonl", "--tokenizer", "gpt2", "--output", tmp.resolve("m").toString()};
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> PrepareJob.run(spark, PrepareJob.Options.parse(args), null));
        assertTrue(e.getMessage().contains("2 line(s) are not valid JSON") && e.getMessage().contains("mixed.jsonl")
                && e.getMessage().contains("--max-bad-lines"), e.getMessage());
        String[] allowing = java.util.Arrays.copyOf(args, args.length + 2);
        allowing[args.length] = "--max-bad-lines";
        allowing[args.length + 1] = "2";
        PrepareJob.Report r = PrepareJob.run(spark, PrepareJob.Options.parse(allowing), null);
        assertEquals(5, r.documents());
        assertEquals(2, r.badLines());
        assertEquals(1, r.emptyRows(), "the valid line without 'text' is reported too");
        assertTrue(r.toString().contains("skipped 2 malformed JSON line(s)") && r.toString().contains("skipped 1 row(s) without text"), r.toString());
    }
}
