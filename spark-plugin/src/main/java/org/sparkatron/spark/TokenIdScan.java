package org.sparkatron.spark;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.apache.spark.SparkContext;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.api.java.function.Function;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDataset;

/**
 * The driver's check, before launch, that every token id of bare Megatron datasets (prefixes without a
 * {@code prepare} manifest, whose vocabulary nobody recorded) fits the model's vocabulary: found inside
 * the barrier stage, a bad id would fail the job only after every step before it. One ordinary Spark job
 * reads the {@code .bin} files in chunks of about 16M tokens (ranged reads, any Hadoop path) on the
 * executors; files whose dtype cannot hold a bad id (unsigned, maximum below the vocabulary) are skipped.
 * The config key {@code check_token_ids: false} skips the scan (the ranks still refuse a bad sample,
 * once, as a {@link DeterministicFailure}).
 *
 * <p>Blocking (runs a Spark job from the calling thread); refusals are IllegalArgumentExceptions naming
 * the file, the sequence, the position and the id.
 */
final class TokenIdScan {
    /** Tokens per scan task. */
    static final long CHUNK_TOKENS = 1L << 24;

    private TokenIdScan() {
    }

    /** Returns a one-line summary ("" when there was nothing to scan); throws for the first bad id found. */
    static String check(SparkContext sc, TrainConfig cfg, Map<String, String> hadoopConf) {
        if (!cfg.checkTokenIds) {
            return "";
        }
        int vocab = cfg.model().vocabSize();
        List<String> prefixes;
        List<long[]> chunks = new ArrayList<>(); // {prefix index, first sequence, end sequence}
        long tokens = 0;
        try {
            MegatronInput.Prefixes p = MegatronInput.prefixes(cfg, hadoopConf);
            if (p.vocabularyChecked()) {
                return "";
            }
            prefixes = p.prefixes();
            for (int f = 0; f < prefixes.size(); f++) {
                try (IndexedDataset ds = IndexedDataset.open(prefixes.get(f), hadoopConf)) {
                    IndexedDType t = ds.dtype();
                    boolean signed = t.name().startsWith("INT");
                    if (!signed && t.maxToken() < vocab) {
                        continue; // no id this dtype can hold is outside the vocabulary
                    }
                    int start = 0;
                    long inChunk = 0;
                    for (int s = 0; s < ds.sequenceCount(); s++) {
                        inChunk += ds.sequenceLength(s);
                        if (inChunk >= CHUNK_TOKENS) {
                            chunks.add(new long[] {f, start, s + 1});
                            start = s + 1;
                            tokens += inChunk;
                            inChunk = 0;
                        }
                    }
                    if (start < ds.sequenceCount()) {
                        chunks.add(new long[] {f, start, ds.sequenceCount()});
                        tokens += inChunk;
                    }
                }
            }
        } catch (IOException e) {
            throw new IllegalArgumentException("cannot read Megatron dataset '" + cfg.input + "': " + e.getMessage(), e);
        }
        if (chunks.isEmpty()) {
            return "";
        }
        long t0 = System.nanoTime();
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(sc);
        String previous = sc.getLocalProperty("spark.job.description");
        List<long[]> found;
        try {
            sc.setLocalProperty("spark.job.description", "sparkatron: checking the token ids of " + cfg.input);
            List<Integer> ids = new ArrayList<>();
            for (int i = 0; i < chunks.size(); i++) {
                ids.add(i);
            }
            found = jsc.parallelize(ids, chunks.size()).map(new Scan(prefixes, chunks, vocab, hadoopConf)).collect();
        } finally {
            sc.setLocalProperty("spark.job.description", previous);
        }
        long bad = 0;
        long[] first = null;
        for (long[] r : found) {
            if (r[0] > 0) {
                bad += r[0];
                first = first == null ? r : first;
            }
        }
        if (first != null) {
            throw new IllegalArgumentException(String.format(Locale.ROOT, "Megatron dataset %s: %d token id(s) outside the model's "
                    + "vocabulary of %d, the first in sequence %d at position %d: %d (was it tokenized for another model?)",
                    prefixes.get((int) first[1]), bad, vocab, first[2], first[3], first[4]));
        }
        return String.format(Locale.ROOT, "checked %d token ids against the vocabulary of %d in %.1f s", tokens, vocab,
                (System.nanoTime() - t0) / 1e9);
    }

    /** One chunk on an executor: {bad count, prefix index, sequence, position, id of the first bad one}. */
    private static final class Scan implements Function<Integer, long[]> {
        private static final long serialVersionUID = 1L;
        private final List<String> prefixes;
        private final List<long[]> chunks;
        private final int vocab;
        private final Map<String, String> hadoopConf;

        Scan(List<String> prefixes, List<long[]> chunks, int vocab, Map<String, String> hadoopConf) {
            this.prefixes = new ArrayList<>(prefixes);
            this.chunks = new ArrayList<>(chunks);
            this.vocab = vocab;
            this.hadoopConf = new java.util.HashMap<>(hadoopConf);
        }

        @Override
        public long[] call(Integer chunk) throws IOException {
            long[] c = chunks.get(chunk);
            long[] result = {0, c[0], -1, -1, 0};
            try (IndexedDataset ds = IndexedDataset.open(prefixes.get((int) c[0]), hadoopConf)) {
                int[] buf = new int[0];
                for (int s = (int) c[1]; s < (int) c[2]; s++) {
                    int len = ds.sequenceLength(s);
                    if (buf.length < len) {
                        buf = new int[Math.max(len, 2 * buf.length)];
                    }
                    ds.read(s, 0, len, buf, 0);
                    for (int i = 0; i < len; i++) {
                        if (buf[i] < 0 || buf[i] >= vocab) {
                            if (result[0]++ == 0) {
                                result[2] = s;
                                result[3] = i;
                                result[4] = buf[i];
                            }
                        }
                    }
                }
            }
            return result;
        }
    }
}
