package org.sparkatron.spark;

import java.io.Serializable;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.SparkEnv;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.data.io.HadoopCheckpointStorage;
import org.sparkatron.device.Device;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.DataParallel;
import org.sparkatron.parallel.ExpertGradientSync;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.TpBroadcastSource;
import org.sparkatron.parallel.FullWeights;
import org.sparkatron.parallel.PipelineParallel;
import org.sparkatron.train.Evaluator;
import org.sparkatron.train.GradientSync;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.SampleSource;
import org.sparkatron.train.Trainer;
import scala.Tuple2;
import scala.collection.JavaConverters;
import scala.runtime.AbstractFunction1;

/**
 * The body of one barrier task = one rank. Binds its device (the GPU address Spark assigned, or the CPU),
 * meets the other ranks ({@link CommWiring}) and carves its TP, CP and DP groups out of the world
 * ({@link ProcessGroups}, {@link Layout}: TP fastest), builds its tensor-parallel shard of the model from the shipped
 * config and seed, or from the {@code init_from} model directory (each DP group's rank 0 broadcasts its
 * shard so every replica starts identical), trains
 * {@code steps} steps on the samples the data shuffle delivered to TP rank 0 of its replica (which
 * broadcasts every sample to its TP group: {@link TpBroadcastSource}), reports progress (rank 0), and
 * returns a {@link RankReport} (rank 0's carries the full weights, gathered from the TP shards).
 *
 * <p>Failure: any exception aborts the communicator, so every peer fails at its next collective instead
 * of waiting; a watchdog thread does the same when Spark kills the task (another rank failed, or the
 * job was cancelled). A failure that a retry would repeat (a non-finite loss, a bad sample) is thrown as
 * a {@link DeterministicFailure}, which the driver's {@link FailFast} turns into the job's end instead
 * of a stage retry. Everything lives in this call: several ranks may run in one JVM.
 */
final class RankTask extends AbstractFunction1<scala.collection.Iterator<Tuple2<Long, int[]>>,
        scala.collection.Iterator<Tuple2<Integer, byte[]>>> implements Serializable {
    private static final long serialVersionUID = 1L;
    /** Checkpoint metadata keys: the resolved training config (JSON) and the data description of the job that saved it. */
    static final String TRAIN_CONFIG = "train_config";
    static final String DATA = "data";
    private final TrainConfig cfg;
    private final byte[] secret;
    private final String progressEndpoint;
    private final Map<String, String> hadoopConf; // for ranks that read their input files themselves
    private final String pluginJob; // progress over Spark RPC under this key (the plugin is installed), else null
    private final boolean validation; // the driver found a validation split: every rank evaluates
    private final String dataDescription; // recorded with every checkpoint

    /**
     * @param progressEndpoint the driver's {@link ProgressServer} (host:port), or null
     * @param pluginJob        the job's key for progress over Spark RPC ({@link SparkatronPlugin}), or null
     */
    RankTask(TrainConfig cfg, byte[] secret, String progressEndpoint, String pluginJob, Map<String, String> hadoopConf,
             boolean validation, String dataDescription) {
        this.cfg = cfg;
        this.secret = secret;
        this.progressEndpoint = progressEndpoint;
        this.pluginJob = pluginJob;
        this.hadoopConf = new HashMap<>(hadoopConf);
        this.validation = validation;
        this.dataDescription = dataDescription;
    }

    @Override
    public scala.collection.Iterator<Tuple2<Integer, byte[]>> apply(scala.collection.Iterator<Tuple2<Long, int[]>> data) {
        BarrierTaskContext ctx = BarrierTaskContext.get();
        int rank = ctx.partitionId();
        int attempt = ctx.stageAttemptNumber();
        if (ctx.getTaskInfos().length != cfg.world()) { // seen when Spark re-ran only the failed tasks of a barrier stage
            throw new IllegalStateException("attempt " + attempt + " of the training stage runs " + ctx.getTaskInfos().length
                    + " tasks but the layout needs " + cfg.world() + " ranks (dp x tp x cp x pp): Spark did not restart every rank");
        }
        org.sparkatron.train.JitWarmup.stop(); // local mode: the driver's warm-up gives the cores to the ranks
        Blas.setThreads(cfg.threadsPerRank); // process-wide; the same value from every rank in the JVM
        // this rank's device (one per task: several ranks may share the JVM): the GPU Spark assigned, else the CPU
        RankDevice rankDevice = RankDevice.open(ctx);
        String device = rankDevice.description();
        Device dev = rankDevice.device();
        Communicator comm = rankDevice.connect(ctx, secret, cfg.commTimeoutMs);
        Thread watchdog = watchdog(ctx, comm, rank);
        ResumableTraining ckpt = null; // closed in finally: a failed attempt's background save must stop writing
        try (ProgressChannel progress = rank == 0 && pluginJob != null ? new SparkatronPlugin.Channel(pluginJob)
                : new ProgressReporter(rank == 0 ? progressEndpoint : null, secret);
             ProcessGroups groups = ProcessGroups.create(Layout.of(cfg), comm)) {
            int tpRank = groups.coords()[0];
            int replica = groups.dp().rank(); // the dense data-parallel rank (ep fastest, then dp)
            // Layout.dataRank (TP and CP rank 0 of the first stage) reads this replica's samples
            boolean reader = tpRank == 0 && groups.coords()[1] == 0 && groups.coords()[4] == 0;
            PipelineParallel stage = cfg.pp == 1 ? PipelineParallel.none(cfg.model().layers())
                    : new PipelineParallel(groups.pp(), cfg.pipelineLayout(), groups.embedding());
            // data parallelism inside the engine for dense models: gradient buckets reduced during the backward,
            // optionally ZeRO-1, over DP x CP (Megatron folds CP into the data-parallel gradient reduction and the
            // distributed optimizer); a mixture-of-experts model reduces its dense gradients over the replicas and
            // its experts over the expert-data-parallel group after the backward (ExpertGradientSync)
            boolean moe = cfg.model().isMoe();
            RankContext rankCtx = new RankContext(dev, new TensorParallel(groups.tp(), cfg.sequenceParallel), cfg.precision, stage,
                    moe ? null : new DataParallel(groups.dpWithCp(), cfg.dataParallelConfig()),
                    new ExpertParallel(groups.ep(), groups.expertDp()), cfg.fp8)
                    .withContextParallel(new ContextParallel(groups.cp(), cfg.cpCommType));
            Transformer model;
            if (cfg.initFrom != null) { // each rank reads the model directory and keeps its TP shard
                org.apache.hadoop.conf.Configuration conf = new org.apache.hadoop.conf.Configuration();
                hadoopConf.forEach(conf::set);
                model = io(() -> InitFrom.load(cfg, rankCtx, conf));
            } else {
                model = new Transformer(cfg.model(), rankCtx);
                model.initialize(cfg.seed);
            }
            model.setRecompute(cfg.recompute);
            // one replica's initial weights everywhere: dense ones over DP x CP (replicas and CP ranks start
            // identical), experts over the expert-DP group
            org.sparkatron.model.ParameterSet ps = model.params();
            if (ps.expertOffset() > 0) {
                groups.dpWithCp().broadcast(ps.weights().slice(0, ps.expertOffset()), 0);
            }
            if (ps.expertNumel() > 0) {
                groups.expertDp().broadcast(ps.weights().slice(ps.expertOffset(), ps.expertNumel()), 0);
            }
            Iterator<Tuple2<Long, int[]>> pieces = JavaConverters.asJava(data);
            SampleSource samples;
            SampleSource files = null; // a Megatron dataset this rank reads itself (closed at the end)
            SampleSource valid = null; // this replica's validation samples (TP rank 0; peers get them below)
            if (MegatronInput.FORMAT.equals(cfg.inputFormat)) { // the replica's other ranks get the reader's samples below
                files = reader ? MegatronInput.source(cfg, hadoopConf, replica) : null;
                samples = files;
                valid = validation && reader ? MegatronInput.validSource(cfg, hadoopConf, replica) : null;
            } else { // the shuffle sorts validation pieces (negative keys) before the training pieces
                List<Tuple2<Long, int[]>> validPieces = new java.util.ArrayList<>();
                Tuple2<Long, int[]> firstTraining = null;
                while (pieces.hasNext()) {
                    Tuple2<Long, int[]> p = pieces.next();
                    if (!TokenData.isValid(p._1())) {
                        firstTraining = p;
                        break;
                    }
                    validPieces.add(new Tuple2<>(p._1() - TokenData.VALID_BASE, p._2()));
                }
                Iterator<Tuple2<Long, int[]>> rest = firstTraining == null ? pieces
                        : java.util.stream.Stream.concat(java.util.stream.Stream.of(firstTraining),
                        java.util.stream.StreamSupport.stream(java.util.Spliterators.spliteratorUnknownSize(pieces, 0), false)).iterator();
                samples = new SampleStream(rest, cfg.seqLen + 1, replica, cfg.dp);
                valid = validation && reader ? new SampleStream(validPieces.iterator(), cfg.seqLen + 1, replica, cfg.dp) : null;
            }
            // only the reader of each replica was sent data; it shares every sample with the ranks that need it (its TP
            // and CP peers on the first and last stage: ParallelLayout.Group.DATA)
            if (groups.data() == null) { // a stage between the first and the last: no data, only the position
                samples = SampleSource.none(cfg.seqLen + 1);
            } else if (groups.data().size() > 1) {
                samples = new TpBroadcastSource(reader ? samples : null, cfg.seqLen + 1, groups.data());
            }
            // the model's buckets, or the expert grid's reduction; either averages the loss over the replicas
            GradientSync dpSync = !moe ? model.dataParallel()
                    : ExpertGradientSync.overReplicas(groups.dp(), cfg.bucketBytes, model.params(), groups.expertDp(), model.kernels());
            Trainer trainer = new Trainer(model, samples, cfg.trainerOptions(), dpSync);
            java.util.function.Consumer<String> events = msg -> { // to the executor's log; rank 0's to the driver too
                System.err.println("[sparkatron] rank " + rank + ": " + msg);
                if (rank == 0) {
                    progress.report(TrainConfig.JSON.createObjectNode().put("message", msg).put("attempt", attempt).toString());
                }
            };
            ckpt = checkpointing(cfg, trainer, comm, attempt, events, dataDescription);
            ResumableTraining saves = ckpt;
            long first = saves == null ? 1 : io(saves::resume) + 1; // a retried stage continues from the last checkpoint
            Evaluator evaluator = null;
            if (validation) {
                SampleSource v = valid;
                if (v != null) { // Megatron's order: earlier evaluations consumed their samples
                    v.skip(cfg.evaluationsBy(first - 1) * cfg.evalIters * cfg.replicaBatch());
                }
                // every stage runs the forward; under CP the replica's CP ranks need the samples too, which the
                // DATA group (TP x CP of the first and last stage) reaches, the stages between reading none
                Communicator replicaGroup = cfg.cp > 1 ? groups.data() : groups.get(ParallelLayout.Group.MODEL);
                if (replicaGroup == null) {
                    v = SampleSource.none(cfg.seqLen + 1);
                } else if (replicaGroup.size() > 1) {
                    v = new TpBroadcastSource(reader ? v : null, cfg.seqLen + 1, replicaGroup);
                }
                evaluator = new Evaluator(model, v, cfg.microBatch, cfg.replicaBatch() / cfg.microBatch, cfg.dp, dpSync);
            }
            RankProgress reports = new RankProgress(cfg, attempt, comm, rank == 0 ? progress::report : null);
            reports.start(first, device);
            for (long s = first; s <= cfg.steps; s++) {
                if (rank == cfg.failRank && s == cfg.failStep && attempt < cfg.failAttempts) {
                    if (cfg.failMode.equals("freeze")) {
                        freeze(rank, s, attempt);
                    }
                    throw new IllegalStateException("injected failure: rank " + rank + " at step " + s + " (attempt " + attempt + ")");
                }
                Trainer.StepMetrics m;
                try {
                    m = trainer.step();
                } catch (org.sparkatron.train.DivergedException e) { // every retry would diverge the same way
                    throw new DeterministicFailure(false, "rank " + rank + ": " + e.getMessage() + " (check lr, the data and init_from)");
                }
                String memory = null;
                if (s == first) { // every buffer exists now: the memory report, measured beside predicted
                    memory = trainer.memoryReport();
                    System.err.println("[sparkatron] rank " + rank + ": memory " + memory);
                    if (rank == 0) {
                        events.accept("memory per rank: " + model.memoryEstimate(cfg.microBatch, cfg.seqLen, cfg.microBatches()).summary()
                                + " (predicted; measured in metrics.jsonl)");
                    }
                }
                reports.step(s, m, memory);
                if (evaluator != null && cfg.evaluatesAt(s)) { // before the checkpoint: a resume never repeats it
                    reports.eval(evaluator.run(s, cfg.evalIters));
                }
                if (saves != null) { // saves every checkpoint_every steps and at the end (async_save: in the background)
                    long step = s;
                    io(() -> {
                        saves.afterStep(step, step == cfg.steps);
                        return null;
                    });
                }
            }
            progress.flush(); // the driver has every line before the results arrive
            if (files != null) {
                files.close();
            }
            if (valid != null) {
                valid.close();
            }
            comm.barrier();
            if (trainer.distributedOptimizer() != null) { // the fp32 master weights, not their 16-bit rounding (DP collective)
                trainer.distributedOptimizer().gatherMasterWeights();
            }
            float[] weights = FullWeights.gather(model); // over TP and PP: the whole model on each replica's reader
            if (rank != 0) {
                weights = null;
            }
            String host = ctx.getTaskInfos()[rank].address();
            RankReport report = new RankReport(rank, attempt, host, SparkEnv.get().executorId(), device,
                    ProcessHandle.current().pid(), samples.consumed(), reports.lines(), weights);
            return JavaConverters.asScala(List.of(new Tuple2<>(rank, report.toBytes())).iterator());
        } catch (Throwable t) {
            DeterministicFailure d = DeterministicFailure.in(t);
            if (d != null) { // the driver ends the job before this task fails, so Spark never resubmits the stage (FailFast)
                FailureNotice.send(pluginJob, progressEndpoint, secret, d);
            }
            comm.abort("rank " + rank + " failed: " + t);
            if (d != null && d != t) { // its class, at the top, is what the driver's FailFast recognises
                throw d;
            }
            throw t;
        } finally {
            if (ckpt != null) {
                ckpt.close();
            }
            watchdog.interrupt();
            comm.close();
            dev.close();
        }
    }

    /**
     * Fault injection ({@code fail_mode: "freeze"}): blocks this thread for an hour, ignoring interrupts, as a
     * thread stuck in native code or a GPU kernel would. Only Spark's task reaper (which ends the executor
     * JVM) frees the slot; see docs/spark.md.
     */
    private static void freeze(int rank, long step, int attempt) {
        System.err.println("[sparkatron] rank " + rank + ": injected freeze at step " + step + " (attempt " + attempt
                + "): this thread now ignores interrupts");
        long end = System.nanoTime() + 3600L * 1_000_000_000L;
        while (System.nanoTime() - end < 0) {
            try {
                Thread.sleep(1000);
            } catch (InterruptedException ignored) {
                // what a stuck native call does with an interrupt: nothing
            }
        }
    }

    /**
     * Checkpointing of this rank's training when the config names a checkpoint directory, else null.
     * {@code start_over} applies to the job's first attempt only: a retried stage always resumes.
     */
    private static ResumableTraining checkpointing(TrainConfig cfg, Trainer trainer, Communicator world, int attempt,
                                                   java.util.function.Consumer<String> log, String data) {
        if (cfg.checkpointDir == null) {
            return null;
        }
        DistributedCheckpoint dc = new DistributedCheckpoint(HadoopCheckpointStorage.forPath(cfg.checkpointDir, null),
                cfg.checkpointDir, cfg.keepCheckpoints);
        return new ResumableTraining(trainer, dc, world, cfg.dp,
                new ResumableTraining.Options(cfg.checkpointEvery, cfg.startOver && attempt == 0, java.util.Map.of("attempt", "" + attempt,
                        TRAIN_CONFIG, cfg.resolved().toString(), DATA, data == null ? "" : data), cfg.asyncSave),
                log);
    }

    private interface Io<T> {
        T call() throws java.io.IOException;
    }

    /** Checkpoint I/O inside the task body: failures propagate unchecked (the task fails, Spark retries). */
    private static <T> T io(Io<T> c) {
        try {
            return c.call();
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e.getMessage(), e);
        }
    }

    /** Aborts the communicator when Spark kills this task, so a rank blocked in a collective returns. */
    private static Thread watchdog(BarrierTaskContext ctx, Communicator comm, int rank) {
        Thread w = new Thread(() -> {
            try {
                while (!Thread.currentThread().isInterrupted()) {
                    if (ctx.isInterrupted() || ctx.isFailed()) {
                        comm.abort("rank " + rank + "'s task was killed by Spark (" + ctx.getKillReason().getOrElse(() -> "failed") + ")");
                        return;
                    }
                    Thread.sleep(200);
                }
            } catch (InterruptedException e) {
                // training finished
            }
        }, "sparkatron-watchdog-" + rank);
        w.setDaemon(true);
        w.start();
        return w;
    }
}
