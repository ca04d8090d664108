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
import org.sparkatron.device.cpu.CpuKernels;
import org.sparkatron.model.Transformer;
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
 * job was cancelled). A failure that a retry would repeat (a non-finite loss, a bad sample) is thrown as
 * a {@link DeterministicFailure}, which the driver's {@link FailFast} turns into the job's end instead
 * of a stage retry. Everything lives in this call: several ranks may run in one JVM.
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
        try (ProgressReporter progress = new ProgressReporter(rank == 0 ? progressEndpoint : null, secret);
             ProcessGroups groups = ProcessGroups.create(ParallelLayout.forWorld(cfg.world(), cfg.tp, 1, 1, cfg.pp, 1), comm)) {
            int tpRank = groups.coords()[0];
            int replica = groups.coords()[3];
            TensorParallel tensorParallel = new TensorParallel(groups.tp(), cfg.sequenceParallel);
            Transformer model;
            if (cfg.initFrom != null) { // each rank reads the model directory and keeps its TP shard
                org.apache.hadoop.conf.Configuration conf = new org.apache.hadoop.conf.Configuration();
                hadoopConf.forEach(conf::set);
                model = io(() -> InitFrom.load(cfg, tensorParallel, conf));
            } else {
                model = new Transformer(cfg.model(), new CpuKernels(), tensorParallel, cfg.precision);
                model.initialize(cfg.seed);
            }
            groups.dp().broadcast(model.params().weights(), 0);
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
            Trainer trainer = new Trainer(model, samples, cfg.trainerOptions(),
                    new DataParallelSync(groups.dp(), cfg.bucketBytes));
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
                String line = m.toJson().replaceFirst("}$", String.format(Locale.ROOT, ", \"attempt\": %d}", attempt));
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
            Transformer full = cfg.tp > 1 ? TpCheckpoint.gatherFull(model, false) : model; // TP collective
            float[] weights = null;
            if (rank == 0) {
                weights = new float[(int) full.params().numel()];
                full.params().weights().floats().get(0, weights);
            }
            String host = ctx.getTaskInfos()[rank].address();
            RankReport report = new RankReport(rank, attempt, host, SparkEnv.get().executorId(), device,
                    ProcessHandle.current().pid(), samples.consumed(), metrics, weights);
            return JavaConverters.asScala(List.of(new Tuple2<>(rank, report.toBytes())).iterator());
        } catch (Throwable t) {
            comm.abort("rank " + rank + " failed: " + t);
            DeterministicFailure d = DeterministicFailure.in(t);
            if (d != null && d != t) { // its class, at the top, is what the driver's FailFast recognises
                throw d;
            }
            throw t;
        } finally {
            watchdog.interrupt();
            comm.close();
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
