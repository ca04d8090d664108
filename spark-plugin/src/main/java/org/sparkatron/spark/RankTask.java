package org.sparkatron.spark;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.SparkEnv;
import org.apache.spark.resource.ResourceInformation;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.data.io.HadoopCheckpointStorage;
import org.sparkatron.device.GpuProbe;
import org.sparkatron.device.cpu.Blas;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.ExpertGradientSync;
import org.sparkatron.parallel.ExpertParallel;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.parallel.TpBroadcastSource;
import org.sparkatron.parallel.TpCheckpoint;
import org.sparkatron.train.ResumableTraining;
import org.sparkatron.train.SampleSource;
import org.sparkatron.train.Trainer;
import scala.Tuple2;
import scala.collection.JavaConverters;
import scala.runtime.AbstractFunction1;

/**
 * The body of one barrier task = one rank. Binds its device (the GPU address Spark assigned, or the CPU),
 * meets the other ranks ({@link CommWiring}) and carves its TP and DP groups out of the world
 * ({@link ProcessGroups}, TP fastest), builds its tensor-parallel shard of the model from the shipped
 * config and seed, or from the {@code init_from} model directory (each DP group's rank 0 broadcasts its
 * shard so every replica starts identical), trains
 * {@code steps} steps on the samples the data shuffle delivered to TP rank 0 of its replica (which
 * broadcasts every sample to its TP group: {@link TpBroadcastSource}), reports progress (rank 0), and
 * returns a {@link RankReport} (rank 0's carries the full weights, gathered from the TP shards).
 *
 * <p>Failure: any exception aborts the communicator, so every peer fails at its next collective instead
 * of waiting; a watchdog thread does the same when Spark kills the task (another rank failed, or the
 * job was cancelled). Everything lives in this call: several ranks may run in one JVM.
 */
final class RankTask extends AbstractFunction1<scala.collection.Iterator<Tuple2<Long, int[]>>,
        scala.collection.Iterator<Tuple2<Integer, byte[]>>> implements Serializable {
    private static final long serialVersionUID = 1L;
    private final TrainConfig cfg;
    private final byte[] secret;
    private final String progressEndpoint;
    private final Map<String, String> hadoopConf; // for ranks that read their input files themselves

    RankTask(TrainConfig cfg, byte[] secret, String progressEndpoint) {
        this(cfg, secret, progressEndpoint, Map.of());
    }

    RankTask(TrainConfig cfg, byte[] secret, String progressEndpoint, Map<String, String> hadoopConf) {
        this.cfg = cfg;
        this.secret = secret;
        this.progressEndpoint = progressEndpoint;
        this.hadoopConf = new HashMap<>(hadoopConf);
    }

    @Override
    public scala.collection.Iterator<Tuple2<Integer, byte[]>> apply(scala.collection.Iterator<Tuple2<Long, int[]>> data) {
        BarrierTaskContext ctx = BarrierTaskContext.get();
        int rank = ctx.partitionId();
        int attempt = ctx.stageAttemptNumber();
        String device = boundDevice(ctx);
        Blas.setThreads(cfg.threadsPerRank); // process-wide; the same value from every rank in the JVM
        Communicator comm = CommWiring.connect(ctx, secret, cfg.commTimeoutMs);
        Thread watchdog = watchdog(ctx, comm, rank);
        CpuDevice cpu = new CpuDevice(); // this rank's device (one per task: several ranks may share the JVM)
        try (ProgressReporter progress = new ProgressReporter(rank == 0 ? progressEndpoint : null, secret);
             ProcessGroups groups = ProcessGroups.create(Layout.of(cfg), comm)) {
            int tpRank = groups.coords()[0];
            int replica = groups.dp().rank(); // the dense data-parallel rank (ep fastest, then dp)
            RankContext rankCtx = new RankContext(cpu, new TensorParallel(groups.tp(), cfg.sequenceParallel), cfg.precision, null,
                    new ExpertParallel(groups.ep(), groups.expertDp()));
            Transformer model;
            if (cfg.initFrom != null) { // each rank reads the model directory and keeps its TP shard
                org.apache.hadoop.conf.Configuration conf = new org.apache.hadoop.conf.Configuration();
                hadoopConf.forEach(conf::set);
                model = io(() -> InitFrom.load(cfg, rankCtx, conf));
            } else {
                model = new Transformer(cfg.model(), rankCtx);
                model.initialize(cfg.seed);
            }
            // one replica's initial weights everywhere: dense ones over the DP group, experts over the expert-DP group
            org.sparkatron.model.ParameterSet ps = model.params();
            if (ps.expertOffset() > 0) {
                groups.dp().broadcast(ps.weights().slice(0, ps.expertOffset()), 0);
            }
            if (ps.expertNumel() > 0) {
                groups.expertDp().broadcast(ps.weights().slice(ps.expertOffset(), ps.expertNumel()), 0);
            }
            Iterator<Tuple2<Long, int[]>> pieces = JavaConverters.asJava(data);
            SampleSource samples;
            SampleSource files = null; // a Megatron dataset this rank reads itself (closed at the end)
            if (MegatronInput.FORMAT.equals(cfg.inputFormat)) { // TP peers get their rank 0's samples below
                files = tpRank == 0 ? MegatronInput.source(cfg, hadoopConf, replica) : null;
                samples = files;
            } else {
                samples = new SampleStream(pieces, cfg.seqLen + 1, replica, cfg.dp);
            }
            if (cfg.tp > 1) { // only TP rank 0 of each replica was sent data; it shares every sample
                samples = new TpBroadcastSource(tpRank == 0 ? samples : null, cfg.seqLen + 1, groups.tp());
            }
            org.sparkatron.train.GradientSync dense = new DataParallelSync(groups.dp(), cfg.bucketBytes);
            Trainer trainer = new Trainer(model, samples, cfg.trainerOptions(), !model.config().isMoe() ? dense
                    : new ExpertGradientSync(dense, model.params(), groups.expertDp(), cfg.dp, model.kernels()));
            List<String> metrics = new ArrayList<>();
            java.util.function.Consumer<String> events = msg -> { // to the executor's log; rank 0's to the driver too
                System.err.println("[sparkatron] rank " + rank + ": " + msg);
                if (rank == 0) {
                    progress.report(TrainConfig.JSON.createObjectNode().put("message", msg).put("attempt", attempt).toString());
                }
            };
            ResumableTraining ckpt = checkpointing(cfg, trainer, comm, attempt, events);
            long first = ckpt == null ? 1 : io(ckpt::resume) + 1; // a retried stage continues from the last checkpoint
            for (long s = first; s <= cfg.steps; s++) {
                if (rank == cfg.failRank && s == cfg.failStep && attempt < cfg.failAttempts) {
                    throw new IllegalStateException("injected failure: rank " + rank + " at step " + s + " (attempt " + attempt + ")");
                }
                Trainer.StepMetrics m = trainer.step();
                String line = m.toJson().replaceFirst("}$", String.format(Locale.ROOT, ", \"attempt\": %d}", attempt));
                if (s == first) { // every buffer exists now: the memory report, measured beside predicted
                    String memory = trainer.memoryReport();
                    System.err.println("[sparkatron] rank " + rank + ": memory " + memory);
                    if (rank == 0) {
                        events.accept("memory per rank: " + model.memoryEstimate(cfg.microBatch, cfg.seqLen).summary()
                                + " (predicted; measured in metrics.jsonl)");
                        line = line.replaceFirst("}$", ", \"memory\": " + memory + "}");
                    }
                }
                if (rank == 0) {
                    metrics.add(line);
                    progress.report(line);
                }
                if (ckpt != null && (s == cfg.steps || (cfg.checkpointEvery > 0 && s % cfg.checkpointEvery == 0))) {
                    events.accept("checkpoint saved: " + io(ckpt::save));
                }
            }
            if (files != null) {
                files.close();
            }
            comm.barrier();
            Transformer full = cfg.tp > 1 || cfg.ep > 1 ? TpCheckpoint.gatherFull(model, false) : model; // TP/EP collective
            float[] weights = null;
            if (rank == 0) {
                weights = full.params().downloadWeights();
            }
            String host = ctx.getTaskInfos()[rank].address();
            RankReport report = new RankReport(rank, attempt, host, SparkEnv.get().executorId(), device,
                    ProcessHandle.current().pid(), samples.consumed(), metrics, weights);
            return JavaConverters.asScala(List.of(new Tuple2<>(rank, report.toBytes())).iterator());
        } catch (Throwable t) {
            comm.abort("rank " + rank + " failed: " + t);
            throw t;
        } finally {
            watchdog.interrupt();
            comm.close();
            cpu.close();
        }
    }

    /**
     * Checkpointing of this rank's training when the config names a checkpoint directory, else null.
     * {@code start_over} applies to the job's first attempt only: a retried stage always resumes.
     */
    private static ResumableTraining checkpointing(TrainConfig cfg, Trainer trainer, Communicator world, int attempt,
                                                   java.util.function.Consumer<String> log) {
        if (cfg.checkpointDir == null) {
            return null;
        }
        DistributedCheckpoint dc = new DistributedCheckpoint(HadoopCheckpointStorage.forPath(cfg.checkpointDir, null),
                cfg.checkpointDir, cfg.keepCheckpoints);
        return new ResumableTraining(trainer, dc, world, cfg.dp,
                new ResumableTraining.Options(cfg.checkpointEvery, cfg.startOver && attempt == 0, java.util.Map.of("attempt", "" + attempt)),
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

    /**
     * "cpu" when the task has no GPU; with a GPU address from Spark, that address, then the device the rank
     * actually computes on and why, from {@link GpuProbe} (which loads nothing): e.g. "gpu:0; compute: cpu
     * (cuda unavailable: missing libcuda.so.1 (CUDA driver))".
     */
    static String boundDevice(BarrierTaskContext ctx) {
        ResourceInformation gpu = ctx.resourcesJMap().get("gpu");
        if (gpu != null && gpu.addresses().length > 0) {
            GpuProbe.Report probe = GpuProbe.system().probe();
            // the address Spark assigned first (what the rank binds), then what it computes on and why
            return "gpu:" + gpu.addresses()[0] + "; compute: " + probe.device() + " (" + probe.reason() + ")";
        }
        return "cpu";
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
