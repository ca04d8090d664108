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
 *         [--max-bad-lines 0] [--master local[*]] [--conf spark.key=value ...]
 * </pre>
 * For {@code text}, each line is a document. Failure: bad arguments, a missing input or text column, an
 * existing output (without {@code --overwrite}) are refused with a message before any work is done.
 */
public final class PrepareJob {
    private PrepareJob() {
    }

    /** Parsed command line. */
    public record Options(String input, String format, String textColumn, String tokenizer, Integer eod, String output,
                          int partitions, boolean overwrite, long maxBadLines) {
        public static Options parse(String[] args) {
            String input = null, format = null, col = "text", tok = null, out = null;
            Integer eod = null;
            int parts = 0;
            long maxBad = 0;
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
                    case "--eod" -> eod = number(a, v, 0);
                    case "--output" -> out = v;
                    case "--partitions" -> parts = number(a, v, 1);
                    case "--max-bad-lines" -> maxBad = number(a, v, 0);
                    default -> throw new IllegalArgumentException("unknown option " + a);
                }
            }
            if (input == null || format == null || tok == null || out == null) {
                throw new IllegalArgumentException("--input, --format, --tokenizer and --output are required");
            }
            if (!List.of("text", "jsonl", "json", "parquet").contains(format)) {
                throw new IllegalArgumentException("--format must be text, jsonl or parquet, got " + format);
            }
            return new Options(input, format, col, tok, eod, out, parts, overwrite, maxBad);
        }

        private static int number(String option, String v, int min) {
            int n;
            try {
                n = Integer.parseInt(v);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(option + " must be an integer, got '" + v + "'");
            }
            if (n < min) {
                throw new IllegalArgumentException(option + " must be >= " + min + ", got " + n);
            }
            return n;
        }
    }

    /** What a run did. */
    public record Report(long documents, long tokens, long textBytes, int shards, double seconds, long badLines, long emptyRows) {
        public Report(long documents, long tokens, long textBytes, int shards, double seconds) {
            this(documents, tokens, textBytes, shards, seconds, 0, 0);
        }

        public double megabytesPerSecond() {
            return textBytes / 1e6 / seconds;
        }

        public double tokensPerSecond() {
            return tokens / seconds;
        }

        @Override
        public String toString() {
            return String.format(Locale.ROOT, "prepare: %d documents, %d tokens, %.1f MB of text in %d shards, %.1f s: "
                    + "%.2f MB/s, %.0f tokens/s%s%s", documents, tokens, textBytes / 1e6, shards, seconds,
                    megabytesPerSecond(), tokensPerSecond(),
                    badLines > 0 ? "; skipped " + badLines + " malformed JSON line(s)" : "",
                    emptyRows > 0 ? "; skipped " + emptyRows + " row(s) without text" : "");
        }
    }

    static final String USAGE = String.join("\n",
            "usage: ./sparkatron prepare --input PATH --format text|jsonl|parquet [--text-column text]",
            "         --tokenizer gpt2|gpt2-legacy|PATH/tokenizer.json [--eod ID] --output PATH [--partitions N] [--overwrite]",
            "         [--max-bad-lines 0] [--master local[*]] [--conf spark.key=value ...]",
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

    /** Spark's column for JSON lines that do not parse (PERMISSIVE mode). */
    static final String CORRUPT = "_corrupt_record";

    /** The input as a one-column ({@code text}) DataFrame, and how many JSON lines did not parse. */
    record Input(Dataset<Row> text, long badLines) {
    }

    /**
     * Reads the input as a one-column ({@code text}) DataFrame. Malformed JSON lines are counted (one extra
     * pass, only when Spark's schema inference met one) and refused when more than {@code --max-bad-lines}
     * (default 0), naming the count, a file and an example line; otherwise skipped and reported.
     */
    static Input readText(SparkSession spark, Options opt) {
        long bad = 0;
        Dataset<Row> df = switch (opt.format()) {
            case "text" -> spark.read().text(opt.input()).withColumnRenamed("value", opt.textColumn());
            case "json", "jsonl" -> spark.read().option("columnNameOfCorruptRecord", CORRUPT).json(opt.input());
            default -> spark.read().parquet(opt.input());
        };
        if (!opt.format().equals("text") && !opt.format().equals("parquet") && Arrays.asList(df.columns()).contains(CORRUPT)) {
            // Spark refuses a query on raw JSON whose pruned columns are only the corrupt-record one: one
            // aggregation that also counts a data column; when no line parsed at all, read the lines as text
            boolean noneParsed = df.columns().length == 1;
            Dataset<Row> raw = noneParsed ? spark.read().text(opt.input()).filter("trim(value) != ''").withColumnRenamed("value", CORRUPT) : df;
            String data = noneParsed ? CORRUPT : Arrays.stream(df.columns()).filter(c -> !c.equals(CORRUPT)).findFirst().orElseThrow();
            Dataset<Row> named = raw.select(org.apache.spark.sql.functions.input_file_name().as("file"), raw.col(CORRUPT), raw.col(data).as("data"));
            org.apache.spark.sql.Column isBad = named.col(CORRUPT).isNotNull();
            Row r = named.agg(org.apache.spark.sql.functions.count_if(isBad),
                    org.apache.spark.sql.functions.first(org.apache.spark.sql.functions.when(isBad, named.col(CORRUPT)), true),
                    org.apache.spark.sql.functions.first(org.apache.spark.sql.functions.when(isBad, named.col("file")), true),
                    org.apache.spark.sql.functions.count(named.col("data"))).first();
            bad = r.getLong(0);
            if (bad > opt.maxBadLines()) {
                String line = r.getString(1);
                throw new IllegalArgumentException(opt.input() + ": " + bad + " line(s) are not valid JSON, e.g. in " + r.getString(2)
                        + ": '" + (line.length() > 80 ? line.substring(0, 80) + "..." : line.strip()) + "'; fix them, or skip up to N with "
                        + "--max-bad-lines N");
            }
            df = df.filter(df.col(CORRUPT).isNull()).drop(CORRUPT); // skipped and counted, not rows without text
        }
        if (!Arrays.asList(df.columns()).contains(opt.textColumn())) {
            throw new IllegalArgumentException(opt.input() + ": no column '" + opt.textColumn() + "'; columns are "
                    + Arrays.toString(df.columns()) + " (choose one with --text-column)");
        }
        if (!(df.schema().apply(opt.textColumn()).dataType() instanceof StringType)) {
            throw new IllegalArgumentException(opt.input() + ": column '" + opt.textColumn() + "' is "
                    + df.schema().apply(opt.textColumn()).dataType().simpleString() + ", not a string");
        }
        df = df.select(opt.textColumn());
        return new Input(opt.partitions() > 0 ? df.repartition(opt.partitions()) : df, bad);
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
        Input in = readText(spark, opt);
        Dataset<Row> df = in.text();
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        LongAccumulator docs = jsc.sc().longAccumulator("prepare documents");
        LongAccumulator tokens = jsc.sc().longAccumulator("prepare tokens");
        LongAccumulator bytes = jsc.sc().longAccumulator("prepare text bytes");
        LongAccumulator empty = jsc.sc().longAccumulator("prepare rows without text");
        long t0 = System.nanoTime();
        Thread reporter = progress == null ? null : startProgress(jsc, docs, tokens, bytes, t0, progress);
        List<ShardWriter.Shard> shards;
        try {
            jsc.setJobDescription("sparkatron prepare -> " + opt.output());
            shards = new ArrayList<>(df.javaRDD()
                    .mapPartitionsWithIndex(new ShardWriter(spec, opt.output(), dtype, conf, docs, tokens, bytes, empty), false)
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
        return new Report(d, t, b, shards.size(), seconds, in.badLines(), empty.value());
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
