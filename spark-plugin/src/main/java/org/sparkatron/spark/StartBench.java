package org.sparkatron.spark;

import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.stream.IntStream;
import org.apache.spark.SparkContext;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerJobEnd;
import org.apache.spark.scheduler.SparkListenerJobStart;
import org.apache.spark.scheduler.SparkListenerStageCompleted;
import org.apache.spark.scheduler.SparkListenerTaskStart;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.sparkatron.bench.BenchArgs;
import org.sparkatron.cli.Cli;
import org.sparkatron.data.spark.SparkJvm;
import org.sparkatron.data.spark.SparkOptions;

/**
 * {@code ./sparkatron bench-start [--docs 4000,4000000] [--rounds 3] [--dir DIR] [--master local[2]]}: a benchmark, not a
 * test. The time from the start of {@code fit} to the first training step with the demo's job (dp=2, 300 steps of
 * 16 x 32 tokens, data_split 95,5,0) on the demo's documents ({@link SyntheticData}): the demo's own DataFrame for
 * 4,000 documents, a Parquet directory of the same generator's documents (written once, as {@code train} reads its
 * input) for larger counts. Once rank 0 reports step 1 the job is cancelled. Its phases come from a SparkListener
 * (each Spark job before training, the packing stage, the barrier stage's first task) and the job's progress
 * lines (data ready, rank 0 started, step 1 done).
 *
 * <p>Peer, in the same rounds (alternating with the fit): one Spark pass over the same DataFrame that reads the
 * token column ({@code sum(size(tokens))}), and a bare {@code df.count()}. Medians over the rounds; the first round
 * of the first size runs in a cold JVM, as {@code ./sparkatron demo} does. Before the rounds, Spark's own fixed cost
 * in this fresh JVM: the session's start and its first SQL job (a trivial sum over {@code spark.range}), then the
 * same job again.
 */
public final class StartBench {
    static final String USAGE = String.join("\n",
            "usage: ./sparkatron bench-start [--docs 4000,4000000] [--rounds 3] [--dir DIR] [--master local[2]]",
            "  time from the start of fit to the first training step (the demo's job) and its phases, against one Spark",
            "  pass over the same DataFrame (docs/benchmarks.md); --dir keeps the generated Parquet there for the next run");

    private StartBench() {
    }

    public static void main(String[] argv) {
        SparkJvm.quietLogging(argv);
        Cli.main("bench-start", USAGE, argv, StartBench::bench);
    }

    private static int bench(String[] argv) throws Exception {
        SparkJvm.relaunchIfNeeded(StartBench.class, argv);
        SparkOptions sparkOptions = SparkOptions.extract(argv);
        BenchArgs a = new BenchArgs("bench-start", sparkOptions.rest(), Set.of("docs", "rounds", "dir"), Set.of());
        int[] sizes = a.integers("docs", 4000, 4_000_000);
        int rounds = a.integer("rounds", 3);
        long jvmStart = java.lang.management.ManagementFactory.getRuntimeMXBean().getStartTime();
        long s0 = System.nanoTime();
        SparkSession spark = TrainMain.session("sparkatron-bench-start", 2, sparkOptions, System.out);
        double sessionS = (System.nanoTime() - s0) / 1e9;
        // Spark's own fixed cost in a fresh JVM, before anything of ours runs: the first SQL job (class loading,
        // code generation, the JIT), measured on a trivial job, then the same job again
        s0 = System.nanoTime();
        spark.range(1000).selectExpr("sum(id)").collect();
        double firstJobS = (System.nanoTime() - s0) / 1e9;
        s0 = System.nanoTime();
        spark.range(1000).selectExpr("sum(id)").collect();
        double secondJobS = (System.nanoTime() - s0) / 1e9;
        String keep = a.string("dir", null);
        Path dir = keep != null ? Files.createDirectories(Path.of(keep)) : Files.createTempDirectory("sparkatron-bench-start");
        try {
            Timeline timeline = new Timeline();
            spark.sparkContext().addSparkListener(timeline);
            System.out.printf(Locale.ROOT, "bench-start: %s, %d round(s); load average %.1f on %d cores%n", spark.sparkContext().master(),
                    rounds, load(), Runtime.getRuntime().availableProcessors());
            System.out.printf(Locale.ROOT, "Spark in this fresh JVM: session started in %.2f s (%.2f s after the JVM started); its first "
                    + "SQL job (spark.range(1000) summed) %.2f s, the same job again %.2f s%n", sessionS,
                    (System.currentTimeMillis() - jvmStart) / 1e3 - firstJobS - secondJobS, firstJobS, secondJobS);
            for (int docs : sizes) {
                Dataset<Row> df = frame(spark, docs, dir);
                System.out.printf(Locale.ROOT, "%d documents, %d partitions%n", docs, df.rdd().getNumPartitions());
                double[] pass = new double[rounds];
                double[] count = new double[rounds];
                double[] first = new double[rounds];
                double[] data = new double[rounds];
                for (int r = 0; r < rounds; r++) {
                    long t0 = System.nanoTime();
                    long tokens = df(spark, docs, dir).agg(functions.sum(functions.size(functions.col("tokens")))).first().getLong(0);
                    pass[r] = (System.nanoTime() - t0) / 1e9;
                    t0 = System.nanoTime();
                    df(spark, docs, dir).count();
                    count[r] = (System.nanoTime() - t0) / 1e9;
                    Run run = fit(spark, df(spark, docs, dir), timeline);
                    first[r] = run.step1;
                    data[r] = run.data;
                    System.out.printf(Locale.ROOT, "round %d (load average %.1f): peer: one pass (sum of sizes, %d tokens) %.2f s, "
                            + "df.count() %.2f s%n", r + 1, load(), tokens, pass[r], count[r]);
                    System.out.printf(Locale.ROOT, "round %d: fit: first step done at %.2f s; %s%n", r + 1, run.step1, run.phases);
                }
                double p = BenchArgs.median(pass);
                double f = BenchArgs.median(first);
                System.out.printf(Locale.ROOT, "%d documents: start to first step %.2f s (data ready %.2f s), one pass %.2f s, count %.2f s"
                        + " (medians of %d); first step / one pass = %.1fx%n", docs, f, BenchArgs.median(data), p,
                        BenchArgs.median(count), rounds, f / p);
            }
        } finally {
            spark.stop();
            if (keep == null) {
                deleteTree(dir);
            }
        }
        return Cli.OK;
    }

    /** The DataFrame of {@code docs} documents: the demo's own for 4,000 or fewer, else Parquet written once under {@code dir}. */
    private static Dataset<Row> frame(SparkSession spark, int docs, Path dir) {
        if (docs <= 4000 || Files.isDirectory(dir.resolve("docs" + docs))) {
            return df(spark, docs, dir);
        }
        long t0 = System.nanoTime();
        int per = 100_000;
        List<Integer> seeds = new ArrayList<>();
        for (int s = 0; s * per < docs; s++) {
            seeds.add(s);
        }
        var rows = JavaSparkContext.fromSparkContext(spark.sparkContext()).parallelize(seeds, 4).flatMap(s -> {
            List<Row> out = new ArrayList<>();
            for (int[] d : SyntheticData.walks(Math.min(per, docs - s * per), 1000 + s)) {
                out.add(RowFactory.create((Object) IntStream.of(d).boxed().toArray(Integer[]::new)));
            }
            return out.iterator();
        });
        StructType schema = new StructType().add("tokens", DataTypes.createArrayType(DataTypes.IntegerType, true), true);
        spark.createDataFrame(rows, schema).write().parquet(dir.resolve("docs" + docs).toString());
        System.out.printf(Locale.ROOT, "wrote %d generated documents as Parquet in %.1f s%n", docs, (System.nanoTime() - t0) / 1e9);
        return df(spark, docs, dir);
    }

    /** A fresh DataFrame over the same documents (no plan or cache shared between rounds). */
    private static Dataset<Row> df(SparkSession spark, int docs, Path dir) {
        return docs <= 4000 ? SyntheticData.frame(spark, SyntheticData.walks(docs, 1), "tokens", 4)
                : spark.read().parquet(dir.resolve("docs" + docs).toString());
    }

    /** One fit's times (s from its start) and its phases in words. */
    private record Run(double step1, double data, String phases) {
    }

    private static Run fit(SparkSession spark, Dataset<Row> df, Timeline timeline) throws Exception {
        SparkContext sc = spark.sparkContext();
        String group = "bench-start-" + System.nanoTime();
        Lines console = new Lines(sc, group);
        SparkatronEstimator est = new SparkatronEstimator();
        TrainConfig cfg = Demo.config(300, null);
        est.setModelConfig(cfg.model().toJson().toString()).setLogInterval(1); // a progress line for step 1
        sc.setJobGroup(group, "bench-start", true);
        timeline.reset();
        long t0 = System.nanoTime();
        console.t0 = t0;
        try {
            Demo.fit(est, cfg, df, new PrintStream(console, true, StandardCharsets.UTF_8));
            throw new IllegalStateException("the job was meant to be cancelled after its first step");
        } catch (Exception e) {
            if (console.step1 < 0) {
                throw e; // failed before its first step: a real failure
            }
        } finally {
            sc.clearJobGroup();
        }
        while (sc.statusTracker().getActiveStageIds().length > 0 || running(sc) > 0) { // the cancelled ranks have ended
            Thread.sleep(50);
        }
        sc.listenerBus().waitUntilEmpty(10_000);
        double s = 1e-9;
        StringBuilder phases = new StringBuilder();
        List<double[]> jobs = timeline.jobs(t0);
        int before = jobs.size() - 1; // the last one is the training job
        phases.append(String.format(Locale.ROOT, "%d Spark job(s) before training (", before));
        for (int j = 0; j < before; j++) {
            phases.append(String.format(Locale.ROOT, "%s%.2f-%.2f", j == 0 ? "" : ", ", jobs.get(j)[0], jobs.get(j)[1]));
        }
        phases.append(String.format(Locale.ROOT, "), data ready %.2f, training job %.2f, packing stage done %.2f, barrier tasks %.2f, "
                        + "rank 0 started %.2f, step 1 %.2f", (console.data - t0) * s, jobs.isEmpty() ? -1 : jobs.get(before)[0],
                (timeline.packDone - t0) * s, (timeline.barrierStart - t0) * s, (console.rankStart - t0) * s, (console.step1 - t0) * s));
        return new Run((console.step1 - t0) * s, (console.data - t0) * s, phases.toString());
    }

    private static double load() {
        return java.lang.management.ManagementFactory.getOperatingSystemMXBean().getSystemLoadAverage();
    }

    private static int running(SparkContext sc) {
        int n = 0;
        for (var e : sc.statusTracker().getExecutorInfos()) {
            n += e.numRunningTasks();
        }
        return n;
    }

    /** The job's progress lines, timed as they arrive; cancels the job group once step 1 is reported. */
    private static final class Lines extends OutputStream {
        private final ByteArrayOutputStream line = new ByteArrayOutputStream();
        private final SparkContext sc;
        private final String group;
        volatile long t0;
        volatile long data = -1;
        volatile long rankStart = -1;
        volatile long step1 = -1;

        Lines(SparkContext sc, String group) {
            this.sc = sc;
            this.group = group;
        }

        @Override
        public synchronized void write(int b) {
            if (b != '\n') {
                line.write(b);
                return;
            }
            String l = line.toString(StandardCharsets.UTF_8);
            line.reset();
            long now = System.nanoTime();
            if (l.startsWith("[sparkatron] data:") && data < 0) {
                data = now;
            } else if (l.contains("rank 0 starts at step") && rankStart < 0) {
                rankStart = now;
            } else if (l.matches("\\[sparkatron] step +1/.*") && step1 < 0) {
                step1 = now;
                sc.cancelJobGroup(group, "bench-start: first step reached");
            }
        }
    }

    /** Spark jobs and the training job's packing and barrier stages, by wall-clock time. */
    private static final class Timeline extends SparkListener {
        private final long offset = System.nanoTime() - System.currentTimeMillis() * 1_000_000L; // event times are epoch ms
        private final List<long[]> jobs = Collections.synchronizedList(new ArrayList<>()); // {id, start, end}
        private volatile int packStage = -1;
        private volatile int barrierStage = -1;
        volatile long packDone = -1;
        volatile long barrierStart = -1;

        void reset() {
            jobs.clear();
            packStage = -1;
            barrierStage = -1;
            packDone = -1;
            barrierStart = -1;
        }

        /** {start, end} in s after {@code t0}, in order of start. */
        List<double[]> jobs(long t0) {
            List<double[]> out = new ArrayList<>();
            synchronized (jobs) {
                for (long[] j : jobs) {
                    out.add(new double[] {(j[1] - t0) / 1e9, (j[2] - t0) / 1e9});
                }
            }
            return out;
        }

        @Override
        public void onJobStart(SparkListenerJobStart e) {
            jobs.add(new long[] {e.jobId(), e.time() * 1_000_000L + offset, -1});
            String desc = e.properties() == null ? "" : e.properties().getProperty("spark.job.description", "");
            if (desc.startsWith("sparkatron training")) { // stages by id: ..., packing (shuffle map), barrier, closing result
                List<Integer> ids = new ArrayList<>();
                scala.jdk.javaapi.CollectionConverters.asJava(e.stageIds()).forEach(i -> ids.add((Integer) i));
                Collections.sort(ids);
                barrierStage = ids.get(ids.size() - 2);
                packStage = ids.size() >= 3 ? ids.get(ids.size() - 3) : -1;
            }
        }

        @Override
        public void onJobEnd(SparkListenerJobEnd e) {
            synchronized (jobs) {
                for (long[] j : jobs) {
                    if (j[0] == e.jobId()) {
                        j[2] = e.time() * 1_000_000L + offset;
                    }
                }
            }
        }

        @Override
        public void onStageCompleted(SparkListenerStageCompleted e) {
            if (e.stageInfo().stageId() == packStage && e.stageInfo().completionTime().isDefined()) {
                packDone = (Long) e.stageInfo().completionTime().get() * 1_000_000L + offset;
            }
        }

        @Override
        public void onTaskStart(SparkListenerTaskStart e) {
            if (e.stageId() == barrierStage && barrierStart < 0) {
                barrierStart = e.taskInfo().launchTime() * 1_000_000L + offset;
            }
        }
    }

    private static void deleteTree(Path dir) throws java.io.IOException {
        try (var walk = Files.walk(dir)) {
            for (Path p : walk.sorted(java.util.Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }
}
