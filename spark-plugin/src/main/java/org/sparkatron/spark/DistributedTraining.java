package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.fs.FileSystem;
import org.apache.spark.HashPartitioner;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.rdd.RDD;
import org.apache.spark.rdd.ShuffledRDD;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.SparkSession;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;
import scala.Tuple2;

/**
 * Runs one training job on a Spark session: validates everything on the driver, prepares the data
 * shuffle, launches one barrier stage of exactly {@code world} tasks ({@link RankTask}) followed by a
 * shuffle (so Spark retries the whole stage when a rank fails), shows live progress, and returns the
 * trained model; saves it (HF layout), the per-step metrics ({@code metrics.jsonl}, appended live as the
 * steps happen, {@link MetricsLog}) and where each rank ran ({@code ranks.json}) to the output path on
 * any Hadoop FileSystem.
 *
 * <p>Blocking: {@link #run} returns when the job ends; it throws IllegalArgumentException for a refused
 * input before anything is launched, and Spark's exception if the stage fails more often than
 * {@code spark.stage.maxConsecutiveAttempts}. Safe to call from several driver threads (each job has
 * its own secret and progress endpoint).
 */
public final class DistributedTraining {
    private static final Logger LOG = LoggerFactory.getLogger(DistributedTraining.class);

    /** How long the driver waits for executors to offer enough slots before refusing (s). */
    public static final String SLOT_WAIT_CONF = "spark.sparkatron.slotWaitSeconds";

    private DistributedTraining() {
    }

    /**
     * The outcome of a job. {@code metrics} are rank 0's per-step JSON lines of the successful attempt,
     * {@code evaluations} its validation lines ({@code "kind": "eval"}); {@code history} is the whole run's
     * {@code metrics.jsonl} trajectory (steps and evaluations of earlier jobs of a resumed run included) and
     * {@code summary} the closing lines comparing its first and last intervals and evaluations.
     */
    public record Result(Transformer model, List<String> metrics, List<RankReport> ranks, long documents, long tokens,
                         long samplesPerEpoch, long droppedRows, int epochs, List<String> evaluations, List<String> history,
                         List<String> summary) {
        public double firstLoss() {
            return loss(metrics.get(0));
        }

        public double lastLoss() {
            return loss(metrics.get(metrics.size() - 1));
        }

        public static double loss(String metricsLine) {
            try {
                return TrainConfig.JSON.readTree(metricsLine).get("loss").asDouble();
            } catch (IOException e) {
                throw new IllegalStateException(e);
            }
        }
    }

    /** The resolved config and data description saved beside the model ({@link #saveConfig}). */
    static final String TRAIN_CONFIG_FILE = "train_config.json";

    /** Trains on {@code df} (column {@code cfg.inputCol}, array&lt;int&gt;); progress goes to {@code console} (may be null). */
    public static Result run(Dataset<?> df, TrainConfig cfg, PrintStream console) {
        SparkContext sc = df.sparkSession().sparkContext();
        Layout.validate(cfg);
        GpuScheduling.Decision gpus = GpuScheduling.decide(sc.getConf(), sc.master());
        warmUp(sc, cfg, gpus);
        checkMemory(sc, cfg, gpus, console);
        checkSparkSettings(sc, cfg.world(), gpus.profile());
        checkWritable("checkpoint_dir", cfg.checkpointDir, sc.hadoopConfiguration());
        InitFrom.check(cfg, sc.hadoopConfiguration());
        checkNotAnInput(cfg);
        checkTokenizer(cfg, sc);
        cfg = ResumeCheck.check(cfg, sc.hadoopConfiguration(), say(console));
        TokenData.Prepared data = TokenData.prepare(df, cfg, cfg.model().vocabSize());
        String summary = String.format(java.util.Locale.ROOT,
                "%d documents, %d tokens, %d samples of %d tokens per epoch, %d epoch(s) for %d steps x %d samples%s%s",
                data.documents(), data.tokens(), data.samplesPerEpoch(), cfg.seqLen + 1, data.epochs(), cfg.steps, cfg.globalBatch,
                data.validation() ? String.format(java.util.Locale.ROOT, "; validation: %d documents, %d samples per epoch (split %s)",
                        data.validDocuments(), data.validSamplesPerEpoch(), cfg.dataSplit) : "",
                data.droppedRows() > 0 ? "; dropped " + data.droppedRows() + " bad row(s) of column '" + cfg.inputCol + "'" : "");
        LOG.info("sparkatron: {}", summary);
        if (console != null) {
            console.println("[sparkatron] data: " + summary);
        }
        try {
            return launch(sc, cfg, console, gpus, data.byRank().rdd(), Map.of(), new long[] {data.documents(), data.tokens(),
                data.samplesPerEpoch(), data.droppedRows(), data.epochs()}, summary, data.validation());
        } finally {
            data.cached().unpersist(false);
        }
    }

    /**
     * Trains on a Megatron indexed dataset ({@code input_format} "megatron", see {@link MegatronInput}):
     * the driver checks the files, then each rank that needs data reads them itself.
     */
    public static Result runMegatron(SparkSession spark, TrainConfig cfg, PrintStream console) {
        SparkContext sc = spark.sparkContext();
        Layout.validate(cfg);
        GpuScheduling.Decision gpus = GpuScheduling.decide(sc.getConf(), sc.master());
        warmUp(sc, cfg, gpus);
        checkMemory(sc, cfg, gpus, console);
        checkSparkSettings(sc, cfg.world(), gpus.profile());
        checkWritable("checkpoint_dir", cfg.checkpointDir, sc.hadoopConfiguration());
        InitFrom.check(cfg, sc.hadoopConfiguration());
        checkNotAnInput(cfg);
        cfg = ResumeCheck.check(cfg, sc.hadoopConfiguration(), say(console));
        Map<String, String> hadoopConf = new HashMap<>();
        for (Map.Entry<String, String> e : sc.hadoopConfiguration()) {
            hadoopConf.put(e.getKey(), e.getValue());
        }
        cfg = MegatronInput.withManifestTokenizer(cfg, hadoopConf); // the model keeps prepare's tokenizer
        checkTokenizer(cfg, sc);
        MegatronInput.Checked checked = MegatronInput.validate(cfg, hadoopConf);
        String summary = checked.summary();
        String scanned = TokenIdScan.check(sc, cfg, hadoopConf);
        if (!scanned.isEmpty()) {
            summary += "; " + scanned;
        }
        LOG.info("sparkatron: {}", summary);
        if (console != null) {
            console.println("[sparkatron] data: " + summary);
        }
        RDD<Tuple2<Long, int[]>> none = JavaSparkContext.fromSparkContext(sc)
                .<Tuple2<Long, int[]>>parallelize(List.of(), cfg.world()).rdd(); // one empty partition per rank
        return launch(sc, cfg, console, gpus, none, hadoopConf, new long[] {-1, -1, -1, 0, -1}, summary, checked.validation());
    }

    /** The barrier stage, the closing shuffle and the result; {@code stats}: documents, tokens, samples/epoch, dropped, epochs. */
    private static Result launch(SparkContext sc, TrainConfig cfg, PrintStream console, GpuScheduling.Decision gpus,
                                 RDD<Tuple2<Long, int[]>> input, Map<String, String> hadoopConf, long[] stats, String dataSummary,
                                 boolean validation) {
        LOG.info("sparkatron: training stage resources: {}", gpus.reason());
        if (console != null) {
            console.println("[sparkatron] launching " + cfg.world() + " rank(s) (dp=" + cfg.dp + ", tp=" + cfg.tp
                    + (cfg.sequenceParallel ? " +sp" : "") + (cfg.cp > 1 ? ", cp=" + cfg.cp + " " + cfg.cpCommType.label() : "")
                    + (cfg.pp > 1 ? ", pp=" + cfg.pp : "") + (cfg.virtualPp > 1 ? " x " + cfg.virtualPp + " chunks" : "")
                    + (cfg.recompute != org.sparkatron.model.Recompute.NONE ? ", recompute " + cfg.recompute.label() : "")
                    + ") in one barrier stage; " + gpus.reason() + "; " + (validation
                    ? "validation every " + (cfg.evalInterval == 0 ? cfg.steps : cfg.evalInterval) + " steps (" + cfg.evalIters
                    + " batches) and at the end" : "no validation split (data_split " + cfg.dataSplit + "): no evaluation"));
        }
        byte[] secret = new byte[32];
        new SecureRandom().nextBytes(secret);
        SparkConf conf = sc.getConf();
        String bind = conf.get("spark.driver.bindAddress", conf.get("spark.driver.host", "127.0.0.1"));
        String advertise = conf.get("spark.driver.host", bind);
        String previousInterrupt = sc.getLocalProperty("spark.job.interruptOnCancel");
        String previousDescription = sc.getLocalProperty("spark.job.description");
        // results go to a staging directory, moved into place when the job succeeds; it also proves now,
        // before training, that the output can be written
        OutputCommit commit = cfg.output == null ? null : OutputCommit.begin(cfg.output, sc.hadoopConfiguration());
        // metrics.jsonl, the plot, TensorBoard and MLflow are written live as rank 0's reports reach the driver
        TrainingMonitor monitor;
        try {
            monitor = new TrainingMonitor(cfg, sc.hadoopConfiguration(), console, dataSummary,
                    cfg.output != null ? new org.apache.hadoop.fs.Path(cfg.output).getName() : sc.appName(),
                    commit == null ? null : commit.staging());
        } catch (IOException e) {
            throw new IllegalArgumentException("output '" + cfg.output + "' cannot be written: " + e.getMessage(), e);
        }
        if (commit != null && !TrainingMonitor.mayResume(cfg)) {
            monitor.say("live metrics.jsonl and loss.svg: " + commit.staging() + " (moved into " + cfg.output + " with the model)");
        }
        // with the Sparkatron plugin installed, progress comes over Spark's RPC; else through a small socket
        SparkatronDriverPlugin plugin = SparkatronDriverPlugin.forContext(sc);
        String pluginJob = plugin == null ? null : ProgressServer.token(secret);
        if (plugin != null) {
            plugin.register(pluginJob, monitor);
            monitor.say("progress over Spark RPC (Sparkatron plugin); live page: the Spark UI's Sparkatron tab"
                    + (sc.uiWebUrl().isDefined() ? " at " + sc.uiWebUrl().get() + "/sparkatron/" : ""));
        }
        try (monitor; ProgressServer progress = plugin != null ? null : new ProgressServer(bind, advertise, secret, cfg.steps, null, monitor);
             FailFast failFast = new FailFast(sc)) {
            // a rank with a deterministic failure tells the driver first (FailureNotice): the job ends before Spark retries
            if (plugin != null) {
                plugin.register(pluginJob, failFast);
            } else {
                progress.onFailure(failFast::noticed);
            }
            if (commit != null) { // committed with the model: a failed job leaves the previous run's config beside its model
                saveConfig(cfg, dataSummary, commit.staging(), sc);
            }
            // a failed rank makes Spark kill the others; interrupting them frees their slots at once
            sc.setLocalProperty("spark.job.interruptOnCancel", "true");
            sc.setLocalProperty("spark.job.description", "sparkatron training: " + cfg.world() + " ranks, " + cfg.steps + " steps");
            RDD<Tuple2<Integer, byte[]>> ranks = input.barrier()
                    .mapPartitions(new RankTask(cfg, secret, progress == null ? null : progress.endpoint(), pluginJob, hadoopConf,
                            validation, dataSummary), false,
                            TokenData.tag(Tuple2.class));
            if (gpus.profile() != null) {
                ranks = ranks.withResources(gpus.profile()); // this stage only: one GPU per rank
            }
            // the closing shuffle makes the barrier stage a shuffle-map stage, which Spark retries as a whole
            ShuffledRDD<Integer, byte[], byte[]> closing = new ShuffledRDD<>(ranks, new HashPartitioner(1),
                    TokenData.tag(Integer.class), TokenData.tag(byte[].class), TokenData.tag(byte[].class));
            closing.setSerializer(KryoRegistration.serializer(conf));
            List<byte[]> bytes;
            try {
                bytes = JavaRDD.fromRDD(closing, TokenData.tag(Tuple2.class)).map(t -> ((Tuple2<?, byte[]>) t)._2()).collect();
            } catch (Exception e) { // SparkException is checked to javac; a rank's DeterministicFailure: its message, not Spark's
                throw failFast.outcome(e);
            }
            List<RankReport> reports = new ArrayList<>();
            for (byte[] b : bytes) {
                reports.add(RankReport.fromBytes(b));
            }
            reports.sort(Comparator.comparingInt(RankReport::rank));
            RankReport first = reports.get(0);
            Transformer model = new Transformer(cfg.model(), new CpuDevice());
            model.params().uploadWeights(first.weights());
            for (RankReport r : reports) {
                LOG.info("sparkatron: rank {}", r.describe());
            }
            List<String> steps = new ArrayList<>();
            List<String> evals = new ArrayList<>();
            long firstStep = cfg.steps + 1;
            for (String l : first.metrics()) {
                String kind = metric(l).path("kind").asText("");
                if (kind.isEmpty()) {
                    steps.add(l);
                } else if (kind.equals("eval")) {
                    evals.add(l);
                } else if (kind.equals("start")) {
                    firstStep = metric(l).path("first_step").asLong();
                }
            }
            monitor.catchUp(first.metrics());
            List<String> history = monitor.finish(first.metrics()); // a fresh job's history and plot: into the staging directory
            if (commit != null) { // written to the staging directory, then moved into place
                SparkatronModel.of(model).writeFiles(commit.staging(), sc.hadoopConfiguration());
                saveTokenizer(cfg.tokenizer, commit.staging(), sc);
                saveRanks(reports, commit.staging(), sc);
                commit.commit();
            }
            monitor.uploadArtifacts(cfg.output);
            List<String> summary = RunSummary.lines(history, cfg.logInterval, firstStep, monitor.snapshot().lastInterval());
            Result result = new Result(model, steps, reports, stats[0], stats[1], stats[2], stats[3], (int) stats[4], evals, history, summary);
            if (cfg.output != null && console != null) {
                console.println("[sparkatron] saved model, metrics.jsonl, loss.svg, train_config.json and ranks.json to " + cfg.output);
            }
            monitor.end(true);
            return result;
        } catch (IOException e) {
            throw new IllegalStateException("sparkatron: " + e.getMessage(), e);
        } finally {
            if (commit != null) {
                commit.abort(); // a no-op after a commit; after a failure, the previous results stay as they were
            }
            if (plugin != null) {
                plugin.unregister(pluginJob);
            }
            sc.setLocalProperty("spark.job.interruptOnCancel", previousInterrupt);
            sc.setLocalProperty("spark.job.description", previousDescription);
        }
    }

    /**
     * Refuses settings under which a barrier stage cannot start: dynamic allocation, or fewer free task
     * slots than ranks for the training stage's resource profile ({@code null}: the default one), waiting
     * up to {@link #SLOT_WAIT_CONF} seconds, default 60, for executors to register -- instead of Spark's
     * retries for about 10 minutes.
     */
    static void checkSparkSettings(SparkContext sc, int world, org.apache.spark.resource.ResourceProfile profile) {
        SparkConf conf = sc.getConf();
        checkDynamicAllocation(conf);
        String reaper = frozenRankWarning(conf, sc.isLocal());
        if (reaper != null) {
            LOG.warn("sparkatron: {}", reaper);
        }
        var rp = profile != null ? profile : sc.resourceProfileManager().defaultResourceProfile();
        sc.resourceProfileManager().addResourceProfile(rp); // slot counting looks the profile up by id
        long waitMs = (long) (conf.getDouble(SLOT_WAIT_CONF, 60) * 1000);
        long deadline = System.currentTimeMillis() + waitMs;
        int slots = sc.maxNumConcurrentTasks(rp);
        while (slots < world && System.currentTimeMillis() < deadline && !sc.isLocal()) {
            try {
                Thread.sleep(500);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
            slots = sc.maxNumConcurrentTasks(rp);
        }
        if (slots < world) {
            String gpu = profile != null ? "1 (the training stage's profile)" : conf.get("spark.task.resource.gpu.amount", null);
            throw new IllegalArgumentException("the job needs " + world + " concurrent task slots (one per rank) but the cluster "
                    + "offers " + slots + " (master " + sc.master() + ", spark.task.cpus=" + conf.get("spark.task.cpus", "1")
                    + (gpu != null ? ", spark.task.resource.gpu.amount=" + gpu : "") + "); use fewer ranks or more executors/cores"
                    + (sc.isLocal() ? " (local[N] gives N slots)" : ""));
        }
    }

    /**
     * Refuses a directory the job will write to but cannot ({@code key} names the config key): creates it if
     * needed, then writes and deletes a probe file -- so a read-only checkpoint directory is found before
     * training, not at the first save, on every attempt.
     */
    static void checkWritable(String key, String dir, org.apache.hadoop.conf.Configuration conf) {
        if (dir == null) {
            return;
        }
        org.apache.hadoop.fs.Path root = new org.apache.hadoop.fs.Path(dir);
        org.apache.hadoop.fs.Path probe = new org.apache.hadoop.fs.Path(root, "_sparkatron_write_probe-" + java.util.UUID.randomUUID());
        try {
            FileSystem fs = root.getFileSystem(conf);
            if (fs.exists(root) && !fs.getFileStatus(root).isDirectory()) {
                throw new IllegalArgumentException(key + " '" + dir + "' is a file, not a directory");
            }
            if (!fs.mkdirs(root)) {
                throw new IOException("cannot create the directory");
            }
            fs.create(probe, false).close();
            fs.delete(probe, false);
        } catch (IOException | RuntimeException e) {
            if (e instanceof IllegalArgumentException iae && iae.getMessage().startsWith(key)) {
                throw iae;
            }
            throw new IllegalArgumentException(key + " '" + dir + "' is not writable: " + e.getMessage(), e);
        }
    }

    /**
     * A warning when, on a cluster, a rank frozen in native code would hold its slot until it ends by itself:
     * Spark's task reaper is off or never kills ({@code spark.task.reaper.killTimeout} -1, the default).
     * Null when the reaper will end such a rank's executor, or in local mode (where nothing can).
     */
    static String frozenRankWarning(SparkConf conf, boolean local) {
        boolean enabled = conf.getBoolean("spark.task.reaper.enabled", false);
        long killMs = conf.getTimeAsMs("spark.task.reaper.killTimeout", "-1");
        if (local || (enabled && killMs >= 0)) {
            return null;
        }
        return "spark.task.reaper is " + (enabled ? "on without a killTimeout" : "off") + ": a rank stuck in native code or a "
                + "GPU kernel after a failure would keep its slot and the retry would wait for it; set "
                + "spark.task.reaper.enabled=true and spark.task.reaper.killTimeout=60s (./sparkatron train sets them)";
    }

    /**
     * Local mode with CPU ranks: the ranks will run in this JVM, so the JIT compiles the training path while the
     * data is prepared ({@link JitWarmup}; the ranks stop it when they start).
     */
    private static void warmUp(SparkContext sc, TrainConfig cfg, GpuScheduling.Decision gpus) {
        if (sc.isLocal() && gpus.profile() == null) {
            org.sparkatron.train.JitWarmup.start(cfg.model(), cfg.seqLen);
        }
    }

    /** The memory estimate against where the ranks run ({@link MemoryCheck}): refused before anything starts. */
    static void checkMemory(SparkContext sc, TrainConfig cfg, GpuScheduling.Decision gpus, PrintStream console) {
        boolean gpuPerTask = gpus.profile() != null || "1".equals(sc.getConf().get("spark.task.resource.gpu.amount", null));
        String line = MemoryCheck.check(cfg, new MemoryCheck.Budget(sc.getConf(), sc.isLocal(), gpuPerTask));
        LOG.info("sparkatron: {}", line);
        if (console != null) {
            console.println("[sparkatron] " + line);
        }
    }

    static void checkDynamicAllocation(SparkConf conf) {
        if (conf.getBoolean("spark.dynamicAllocation.enabled", false)) {
            throw new IllegalArgumentException("spark.dynamicAllocation.enabled=true: barrier training needs a fixed set of "
                    + "executors; set spark.dynamicAllocation.enabled=false");
        }
    }

    /** Refuses a tokenizer that could not be saved with the model, before training rather than after. */
    static void checkTokenizer(TrainConfig cfg, SparkContext sc) {
        if (cfg.tokenizer == null || cfg.tokenizer.equalsIgnoreCase("gpt2") || cfg.tokenizer.equalsIgnoreCase("gpt2-legacy")) {
            return;
        }
        Map<String, String> conf = new HashMap<>();
        for (Map.Entry<String, String> e : sc.hadoopConfiguration()) {
            conf.put(e.getKey(), e.getValue());
        }
        try {
            if (!org.sparkatron.data.io.DataPaths.exists(cfg.tokenizer, conf)) {
                throw new IllegalArgumentException("config key 'tokenizer': '" + cfg.tokenizer + "' is neither gpt2 nor an existing tokenizer.json file");
            }
        } catch (IOException e) {
            throw new IllegalArgumentException("config key 'tokenizer': cannot read '" + cfg.tokenizer + "': " + e.getMessage(), e);
        }
    }

    /** Saves the job's tokenizer (if any) beside the model in {@code output}: text in and out without naming it again. */
    static void saveTokenizer(String tokenizer, String output, SparkContext sc) throws IOException {
        if (tokenizer == null) {
            return;
        }
        Map<String, String> conf = new HashMap<>();
        for (Map.Entry<String, String> e : sc.hadoopConfiguration()) {
            conf.put(e.getKey(), e.getValue());
        }
        org.sparkatron.data.tokenizer.ModelTokenizer.save(tokenizer, output, conf);
    }

    /** Writes ranks.json (where each rank ran) under {@code output}. */
    static void saveRanks(List<RankReport> reports, String output, SparkContext sc) throws IOException {
        org.apache.hadoop.fs.Path out = new org.apache.hadoop.fs.Path(output);
        FileSystem fs = out.getFileSystem(sc.hadoopConfiguration());
        List<String> ranks = new ArrayList<>();
        for (RankReport rr : reports) {
            ranks.add(rr.describe());
        }
        writeLines(fs, new org.apache.hadoop.fs.Path(out, "ranks.json"), List.of("[" + String.join(",\n ", ranks) + "]"));
    }

    /**
     * Refuses an output that would overwrite an input: the training data ({@code input}, or a path under
     * it: the model files would join the dataset) or the {@code init_from} model directory. Paths are
     * compared normalised (local ones made absolute), not resolved through links.
     */
    static void checkNotAnInput(TrainConfig cfg) {
        if (cfg.output == null) {
            return;
        }
        String out = normal(cfg.output);
        if (cfg.initFrom != null && out.equals(normal(cfg.initFrom))) {
            throw new IllegalArgumentException("output '" + cfg.output + "' is the init_from model directory: the job would "
                    + "overwrite its own starting model; give another output");
        }
        if (cfg.input != null) {
            for (String in : cfg.input.split(",")) {
                String i = normal(in.strip());
                if (out.equals(i) || out.startsWith(i + "/")) {
                    throw new IllegalArgumentException("output '" + cfg.output + "' is " + (out.equals(i) ? "" : "inside ")
                            + "the input '" + in.strip() + "': the model files would be written into the training data; give another output");
                }
            }
        }
    }

    /** A comparable form of a path: local paths absolute and normalised, others as their normalised URI. */
    private static String normal(String path) {
        java.net.URI u = new org.apache.hadoop.fs.Path(path).toUri().normalize();
        String p = u.getScheme() == null || u.getScheme().equals("file")
                ? java.nio.file.Path.of(u.getPath()).toAbsolutePath().normalize().toString() : u.toString();
        return p.endsWith("/") && p.length() > 1 ? p.substring(0, p.length() - 1) : p;
    }

    /** Writes {@code train_config.json}: the resolved config this job runs with and its data description. */
    static void saveConfig(TrainConfig cfg, String data, String output, SparkContext sc) throws IOException {
        org.apache.hadoop.fs.Path out = new org.apache.hadoop.fs.Path(output);
        FileSystem fs = out.getFileSystem(sc.hadoopConfiguration());
        com.fasterxml.jackson.databind.node.ObjectNode o = TrainConfig.JSON.createObjectNode();
        o.set("config", cfg.resolved());
        o.put("data", data);
        writeLines(fs, new org.apache.hadoop.fs.Path(out, TRAIN_CONFIG_FILE), List.of(o.toPrettyString()));
    }

    private static java.util.function.Consumer<String> say(PrintStream console) {
        return line -> {
            LOG.info("sparkatron: {}", line);
            if (console != null) {
                console.println("[sparkatron] " + line);
            }
        };
    }

    private static void writeLines(FileSystem fs, org.apache.hadoop.fs.Path p, List<String> lines) throws IOException {
        try (OutputStream o = fs.create(p, true)) {
            for (String l : lines) {
                o.write((l + "\n").getBytes(StandardCharsets.UTF_8));
            }
        }
    }

    /** Parses a metrics line (for callers that want fields other than the loss). */
    public static JsonNode metric(String line) {
        try {
            return TrainConfig.JSON.readTree(line);
        } catch (IOException e) {
            throw new IllegalArgumentException(e);
        }
    }
}
