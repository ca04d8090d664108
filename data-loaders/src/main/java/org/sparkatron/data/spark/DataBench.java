package org.sparkatron.data.spark;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Random;
import org.apache.spark.sql.SparkSession;
import org.sparkatron.data.tokenizer.Gpt2Tokenizer;
import org.sparkatron.data.tokenizer.HfTokenizer;

/**
 * {@code ./sparkatron bench-data [--mb 300] [--peer-mb 8] [--master local[2]]}: a benchmark, not a test.
 * Generates {@code --mb} MB of English-like text (seeded), then measures
 * <ol>
 *   <li>GPT-2 tokenization with jtokkit on one thread (MB of text per second per core);</li>
 *   <li>the peer: Hugging Face's Rust tokenizers library (through DJL) with the <em>same</em> GPT-2
 *       vocabulary and merges (a tokenizer.json converted from jtokkit's r50k_base ranks), on the first
 *       {@code --peer-mb} MB, on one thread, checking that both give the same ids;</li>
 *   <li>{@code prepare} end to end (read, tokenize, write shards and manifest) on the whole file.</li>
 * </ol>
 */
public final class DataBench {
    private static final int FILES = 8;

    private DataBench() {
    }

    static final String USAGE = "usage: ./sparkatron bench-data [--mb 300] [--peer-mb 8] [--master local[2]]\n"
            + "  tokenization and prepare throughput on generated text against a plain tokenizer loop (docs/data.md)";

    public static void main(String[] argv) {
        SparkJvm.quietLogging(argv);
        org.sparkatron.cli.Cli.main("bench-data", USAGE, argv, args -> {
            bench(args);
            return org.sparkatron.cli.Cli.OK;
        });
    }

    private static void bench(String[] args) throws Exception {
        int mb = 300;
        double peerMb = 8;
        String master = null;
        for (int i = 0; i < args.length; i += 2) {
            if (i + 1 >= args.length) {
                throw new org.sparkatron.cli.Cli.UsageException("option " + args[i] + " needs a value");
            }
            switch (args[i]) {
                case "--mb" -> mb = Integer.parseInt(args[i + 1]);
                case "--peer-mb" -> peerMb = Double.parseDouble(args[i + 1]);
                case "--master" -> master = args[i + 1];
                default -> throw new org.sparkatron.cli.Cli.UsageException("unknown option " + args[i] + " (./sparkatron bench-data --help)");
            }
        }
        SparkJvm.relaunchIfNeeded(DataBench.class, args);
        Path dir = Files.createTempDirectory("sparkatron-bench-data");
        // Several files, so that prepare gets several partitions per core (balance, visible progress).
        Path text = dir.resolve("corpus");
        Files.createDirectories(text);
        Random rng = new Random(42);
        long bytes = 0;
        List<String> docs = new ArrayList<>();
        for (int f = 0; f < FILES; f++) {
            Path file = text.resolve(String.format("part-%02d.txt", f));
            bytes += generate(file, mb * 1_000_000L / FILES, rng);
            docs.addAll(Files.readAllLines(file));
        }
        System.out.printf(Locale.ROOT, "bench-data: %d documents, %.1f MB of generated text in %d files under %s%n", docs.size(),
                bytes / 1e6, FILES, text);

        Gpt2Tokenizer jt = new Gpt2Tokenizer();
        long warm = 0;
        for (int i = 0; i < docs.size() && warm < 20_000_000; i++) {
            warm += jt.encode(docs.get(i)).length;
        }
        long t0 = System.nanoTime();
        long tokens = 0;
        for (String d : docs) {
            tokens += jt.encode(d).length;
        }
        double jtSec = (System.nanoTime() - t0) / 1e9;
        double jtMbs = bytes / 1e6 / jtSec;
        System.out.printf(Locale.ROOT, "jtokkit GPT-2, 1 thread: %.1f MB/s per core, %.0f tokens/s (%d tokens, %.1f s)%n",
                jtMbs, tokens / jtSec, tokens, jtSec);

        List<String> peerDocs = new ArrayList<>();
        long peerBytes = 0;
        for (String d : docs) {
            if (peerBytes >= peerMb * 1e6) {
                break;
            }
            peerDocs.add(d);
            peerBytes += d.getBytes(StandardCharsets.UTF_8).length + 1;
        }
        try (HfTokenizer hf = new HfTokenizer(gpt2TokenizerJson(), Gpt2Tokenizer.EOD, false)) {
            for (int i = 0; i < Math.min(50, peerDocs.size()); i++) {
                hf.encode(peerDocs.get(i));
            }
            int mismatches = 0;
            long t1 = System.nanoTime();
            List<int[]> hfIds = new ArrayList<>(peerDocs.size());
            for (String d : peerDocs) {
                hfIds.add(hf.encode(d));
            }
            double hfSec = (System.nanoTime() - t1) / 1e9;
            long t2 = System.nanoTime();
            for (int i = 0; i < peerDocs.size(); i++) {
                if (!Arrays.equals(jt.encode(peerDocs.get(i)), hfIds.get(i))) {
                    mismatches++;
                }
            }
            double jtSubSec = (System.nanoTime() - t2) / 1e9;
            double hfMbs = peerBytes / 1e6 / hfSec;
            System.out.printf(Locale.ROOT, "peer: HF tokenizers (Rust, via DJL) with the same GPT-2 vocabulary, 1 thread, on %.1f MB: "
                    + "%.1f MB/s; jtokkit on the same %.1f MB: %.1f MB/s; jtokkit / peer = %.1fx; ids differ in %d of %d documents%n",
                    peerBytes / 1e6, hfMbs, peerBytes / 1e6, peerBytes / 1e6 / jtSubSec, (peerBytes / 1e6 / jtSubSec) / hfMbs,
                    mismatches, peerDocs.size());
        }

        SparkSession spark = SparkJvm.session("sparkatron-bench-data", master);
        try {
            int cores = spark.sparkContext().defaultParallelism();
            String out = dir.resolve("prepared").toString();
            PrepareJob.Report r = PrepareJob.run(spark, PrepareJob.Options.parse(new String[] {"--input", text.toString(),
                "--format", "text", "--tokenizer", "gpt2", "--output", out}), System.out);
            System.out.println(r);
            System.out.printf(Locale.ROOT, "prepare on %s (%d cores): %.1f MB/s, %.1f MB/s per core; tokenization alone %.1f MB/s per core%n",
                    spark.sparkContext().master(), cores, r.megabytesPerSecond(), r.megabytesPerSecond() / cores, jtMbs);
        } finally {
            spark.stop();
            try (var s = Files.walk(dir)) {
                s.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    /** Seeded English-like documents, one per line, until {@code target} bytes. */
    static long generate(Path file, long target, Random r) throws IOException {
        String[] words = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
                + "but have an they you were her she there been one all we their has would when if so no will more other its "
                + "time about what up some out them only into can could than two new first any these may like then over "
                + "model training data parallel tensor pipeline gradient optimizer token sequence attention layer spark "
                + "executor partition shard dataset memory throughput Megatron transformer vocabulary document sample").split(" ");
        long written = 0;
        try (BufferedWriter w = Files.newBufferedWriter(file)) {
            StringBuilder sb = new StringBuilder();
            while (written < target) {
                sb.setLength(0);
                int n = 100 + r.nextInt(900);
                for (int i = 0; i < n; i++) {
                    // Zipf-like: low indices far more often.
                    int k = (int) (words.length * Math.pow(r.nextDouble(), 2.5));
                    String word = words[Math.min(k, words.length - 1)];
                    sb.append(i == 0 ? Character.toUpperCase(word.charAt(0)) + word.substring(1) : word);
                    sb.append(r.nextInt(14) == 0 ? ". " : r.nextInt(10) == 0 ? ", " : " ");
                    if (r.nextInt(40) == 0) {
                        sb.append(r.nextInt(100000)).append(' ');
                    }
                }
                sb.append("end.");
                w.write(sb.toString());
                w.newLine();
                written += sb.length() + 1;
            }
        }
        return written;
    }

    /**
     * GPT-2 as a Hugging Face tokenizer.json, converted from jtokkit's {@code r50k_base} ranks: the vocab
     * maps each token's bytes (in GPT-2's byte-to-unicode alphabet) to its rank; each merge is the split
     * of a token that BPE with only lower-ranked merges produces; ByteLevel pre-tokenizer with GPT-2's
     * regex and decoder; {@code <|endoftext|>} = 50256.
     */
    static String gpt2TokenizerJson() throws IOException {
        Map<String, Integer> ranks = new LinkedHashMap<>();
        try (InputStream in = Gpt2Tokenizer.class.getClassLoader().getResourceAsStream("com/knuddels/jtokkit/r50k_base.tiktoken");
             BufferedReader br = new BufferedReader(new InputStreamReader(in, StandardCharsets.US_ASCII))) {
            String line;
            while ((line = br.readLine()) != null) {
                String[] p = line.split(" ");
                ranks.put(new String(Base64.getDecoder().decode(p[0]), StandardCharsets.ISO_8859_1), Integer.parseInt(p[1]));
            }
        }
        char[] b2u = bytesToUnicode();
        ObjectMapper om = new ObjectMapper();
        ObjectNode vocab = om.createObjectNode();
        ArrayNode merges = om.createArrayNode();
        Map<Integer, String> byRank = new HashMap<>();
        ranks.forEach((k, v) -> byRank.put(v, k));
        for (int rank = 0; rank < byRank.size(); rank++) {
            String tok = byRank.get(rank);
            vocab.put(toUnicode(tok, b2u), rank);
            if (tok.length() > 1) {
                List<String> parts = new ArrayList<>();
                for (char c : tok.toCharArray()) {
                    parts.add(String.valueOf(c));
                }
                while (parts.size() > 2) {
                    int best = -1;
                    int bestRank = Integer.MAX_VALUE;
                    for (int i = 0; i + 1 < parts.size(); i++) {
                        Integer rr = ranks.get(parts.get(i) + parts.get(i + 1));
                        if (rr != null && rr < rank && rr < bestRank) {
                            bestRank = rr;
                            best = i;
                        }
                    }
                    if (best < 0) {
                        break;
                    }
                    parts.set(best, parts.get(best) + parts.remove(best + 1));
                }
                if (parts.size() == 2) {
                    merges.add(toUnicode(parts.get(0), b2u) + " " + toUnicode(parts.get(1), b2u));
                }
            }
        }
        ObjectNode root = om.createObjectNode();
        root.put("version", "1.0");
        root.putNull("truncation");
        root.putNull("padding");
        ObjectNode eot = root.putArray("added_tokens").addObject();
        eot.put("id", Gpt2Tokenizer.EOD).put("content", "<|endoftext|>").put("single_word", false).put("lstrip", false)
                .put("rstrip", false).put("normalized", false).put("special", true);
        root.putNull("normalizer");
        root.putObject("pre_tokenizer").put("type", "ByteLevel").put("add_prefix_space", false).put("trim_offsets", true)
                .put("use_regex", true);
        root.putNull("post_processor");
        root.putObject("decoder").put("type", "ByteLevel").put("add_prefix_space", false).put("trim_offsets", true)
                .put("use_regex", true);
        ObjectNode model = root.putObject("model");
        model.put("type", "BPE").putNull("dropout").putNull("unk_token").putNull("continuing_subword_prefix")
                .putNull("end_of_word_suffix").put("fuse_unk", false).put("byte_fallback", false);
        model.set("vocab", vocab);
        model.set("merges", merges);
        return om.writeValueAsString(root);
    }

    private static String toUnicode(String bytes, char[] b2u) {
        StringBuilder sb = new StringBuilder(bytes.length());
        for (int i = 0; i < bytes.length(); i++) {
            sb.append(b2u[bytes.charAt(i) & 0xFF]);
        }
        return sb.toString();
    }

    /** GPT-2's reversible byte-to-unicode alphabet. */
    private static char[] bytesToUnicode() {
        char[] out = new char[256];
        boolean[] printable = new boolean[256];
        for (int c = '!'; c <= '~'; c++) {
            printable[c] = true;
        }
        for (int c = 0xA1; c <= 0xAC; c++) {
            printable[c] = true;
        }
        for (int c = 0xAE; c <= 0xFF; c++) {
            printable[c] = true;
        }
        int n = 0;
        for (int b = 0; b < 256; b++) {
            out[b] = printable[b] ? (char) b : (char) (256 + n++);
        }
        return out;
    }
}
