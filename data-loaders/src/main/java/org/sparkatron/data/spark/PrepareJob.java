package org.sparkatron.data.spark;

import java.io.IOException;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.apache.spark.SparkStageInfo;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.util.LongAccumulator;
import org.sparkatron.cli.Cli;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.io.DataPaths;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;

/**
 * {@code ./sparkatron prepare} (also a {@code spark-submit --class} entry point): reads text, JSON
 * lines or Parquet from any Spark source, tokenizes it, and writes a Megatron indexed dataset, one shard
 * per partition, plus {@code manifest.json} (see {@link PreparedDataset}), to any Hadoop path. Prints
 * progress while it runs and documents, tokens and throughput at the end.
 *
 * <pre>
 * prepare --input PATH --format text|jsonl|parquet [--text-column text] --tokenizer gpt2|gpt2-legacy|PATH/tokenizer.json
 *         [--eod ID] --output PATH [--partitions N] [--overwrite]
 *         [--master local[*]] [--conf spark.key=value ...]
 * </pre>
 * For {@code text}, each line is a document. Failure: bad arguments, a missing input or text column, an
 * existing output (without {@code --overwrite}) are refused with a message before any work is done.
 */
public final class PrepareJob {
    private PrepareJob() {
    }

    /** Parsed command line. */
    public record Options(String input, String format, String textColumn, String tokenizer, Integer eod, String output,
                          int partitions, boolean overwrite) {
        public static Options parse(String[] args) {
            String input = null, format = null, col = "text", tok = null, out = null;
            Integer eod = null;
            int parts = 0;
            boolean overwrite = false;
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                if (a.equals("prepare") && i == 0) {
                    continue;
                }
                if (a.equals("--overwrite")) {
                    overwrite = true;
                    continue;
                }
                if (i + 1 >= args.length) {
                    throw new IllegalArgumentException("option " + a + " needs a value");
                }
                String v = args[++i];
                switch (a) {
                    case "--input" -> input = v;
                    case "--format" -> format = v.toLowerCase(Locale.ROOT);
                    case "--text-column" -> col = v;
                    case "--tokenizer" -> tok = v;
                    case "--eod" -> eod = Integer.parseInt(v);
                    case "--output" -> out = v;
                    case "--partitions" -> parts = Integer.parseInt(v);
                    default -> throw new IllegalArgumentException("unknown option " + a);
                }
            }
            if (input == null || format == null || tok == null || out == null) {
                throw new IllegalArgumentException("--input, --format, --tokenizer and --output are required");
            }
            if (!List.of("text", "jsonl", "json", "parquet").contains(format)) {
                throw new IllegalArgumentException("--format must be text, jsonl or parquet, got " + format);
            }
            return new Options(input, format, col, tok, eod, out, parts, overwrite);
        }
    }

    /** What a run did. */
    public record Report(long documents, long tokens, long textBytes, int shards, double seconds) {
        public double megabytesPerSecond() {
            return textBytes / 1e6 / seconds;
        }

        public double tokensPerSecond() {
            return tokens / seconds;
        }

        @Override
        public String toString() {
            return String.format(Locale.ROOT, "prepare: %d documents, %d tokens, %.1f MB of text in %d shards, %.1f s: "
                    + "%.2f MB/s, %.0f tokens/s", documents, tokens, textBytes / 1e6, shards, seconds,
                    megabytesPerSecond(), tokensPerSecond());
        }
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron prepare --input PATH --format text|jsonl|parquet [--text-column text]",
            "         --tokenizer gpt2|gpt2-legacy|PATH/tokenizer.json [--eod ID] --output PATH [--partitions N] [--overwrite]",
            "         [--master local[*]] [--conf spark.key=value ...]",
            "  tokenizes documents (text: one per line) into a Megatron indexed dataset, one shard per partition (docs/data.md)");

    public static void main(String[] argv) {
        SparkJvm.quietLogging(argv);
        Cli.main("prepare", USAGE, argv.length == 0 ? new String[] {"--help"} : argv, args -> {
            SparkOptions spark = SparkOptions.extract(args);
            Options opt = Options.parse(spark.rest());
            SparkJvm.relaunchIfNeeded(PrepareJob.class, args);
            SparkSession session = SparkJvm.session("sparkatron-prepare", spark);
            try {
                System.out.println(run(session, opt, System.out));
            } finally {
                session.stop();
            }
            return Cli.OK;
        });
    }

    /** Reads the input as a one-column ({@code text}) DataFrame. */
    static Dataset<Row> readText(SparkSession spark, Options opt) {
        Dataset<Row> df = switch (opt.format()) {
            case "text" -> spark.read().text(opt.input()).withColumnRenamed("value", opt.textColumn());
            case "json", "jsonl" -> spark.read().json(opt.input());
            default -> spark.read().parquet(opt.input());
        };
        if (!Arrays.asList(df.columns()).contains(opt.textColumn())) {
            throw new IllegalArgumentException(opt.input() + ": no column '" + opt.textColumn() + "'; columns are "
                    + Arrays.toString(df.columns()) + " (choose one with --text-column)");
        }
        if (!(df.schema().apply(opt.textColumn()).dataType() instanceof StringType)) {
            throw new IllegalArgumentException(opt.input() + ": column '" + opt.textColumn() + "' is "
                    + df.schema().apply(opt.textColumn()).dataType().simpleString() + ", not a string");
        }
        df = df.select(opt.textColumn());
        return opt.partitions() > 0 ? df.repartition(opt.partitions()) : df;
    }

    /** Runs the job on an existing session; progress lines go to {@code progress} (null for none). */
    public static Report run(SparkSession spark, Options opt, PrintStream progress) throws IOException {
        Map<String, String> conf = SparkHadoop.confMap(spark);
        String manifest = DataPaths.child(opt.output(), PreparedDataset.MANIFEST);
        if (!opt.overwrite() && DataPaths.exists(manifest, conf)) {
            throw new IllegalArgumentException(opt.output() + " already holds a prepared dataset; use --overwrite to replace it");
        }
        TokenizerSpec spec = TokenizerSpec.parse(opt.tokenizer(), opt.eod(), conf);
        int vocab;
        int eod;
        try (TextTokenizer t = spec.create()) {
            vocab = t.vocabSize();
            eod = t.eodId();
        }
        IndexedDType dtype = IndexedDType.optimalFor(vocab);
        Dataset<Row> df = readText(spark, opt);
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        LongAccumulator docs = jsc.sc().longAccumulator("prepare documents");
        LongAccumulator tokens = jsc.sc().longAccumulator("prepare tokens");
        LongAccumulator bytes = jsc.sc().longAccumulator("prepare text bytes");
        long t0 = System.nanoTime();
        Thread reporter = progress == null ? null : startProgress(jsc, docs, tokens, bytes, t0, progress);
        List<ShardWriter.Shard> shards;
        try {
            jsc.setJobDescription("sparkatron prepare -> " + opt.output());
            shards = new ArrayList<>(df.javaRDD()
                    .mapPartitionsWithIndex(new ShardWriter(spec, opt.output(), dtype, conf, docs, tokens, bytes), false)
                    .collect());
        } finally {
            if (reporter != null) {
                reporter.interrupt();
            }
        }
        shards.sort(Comparator.comparingInt(ShardWriter.Shard::partition));
        PreparedDataset.write(opt.output(), spec.name(), vocab, eod, dtype.name().toLowerCase(Locale.ROOT), shards, conf);
        double seconds = (System.nanoTime() - t0) / 1e9;
        long d = 0, t = 0, b = 0;
        for (ShardWriter.Shard s : shards) {
            d += s.documents();
            t += s.tokens();
            b += s.textBytes();
        }
        return new Report(d, t, b, shards.size(), seconds);
    }

    private static Thread startProgress(JavaSparkContext jsc, LongAccumulator docs, LongAccumulator tokens,
                                        LongAccumulator bytes, long t0, PrintStream out) {
        ProgressListener liveDocs = new ProgressListener(docs);
        ProgressListener liveBytes = new ProgressListener(bytes);
        jsc.sc().addSparkListener(liveDocs);
        jsc.sc().addSparkListener(liveBytes);
        Thread th = new Thread(() -> {
            try {
                while (true) {
                    Thread.sleep(2000);
                    int done = 0, total = 0;
                    for (int id : jsc.statusTracker().getActiveStageIds()) {
                        SparkStageInfo info = jsc.statusTracker().getStageInfo(id);
                        if (info != null) {
                            done += info.numCompletedTasks();
                            total += info.numTasks();
                        }
                    }
                    double s = (System.nanoTime() - t0) / 1e9;
                    long mb = liveBytes.value();
                    out.printf(Locale.ROOT, "prepare: %.0f s, partitions %d/%d done, %d documents, %.1f MB of text so far (%.1f MB/s)%n",
                            s, done, total, liveDocs.value(), mb / 1e6, mb / 1e6 / s);
                }
            } catch (InterruptedException e) {
                // finished
            } finally {
                jsc.sc().removeSparkListener(liveDocs);
                jsc.sc().removeSparkListener(liveBytes);
            }
        }, "sparkatron-prepare-progress");
        th.setDaemon(true);
        th.start();
        return th;
    }
}
