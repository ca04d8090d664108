package org.sparkatron.checkpoint;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import org.sparkatron.comm.Communicator;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.optim.DistributedOptimizer;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One rank's checkpoint saves, blocking or asynchronous (Megatron's {@code --async-save}), into a
 * {@link DistributedCheckpoint}. An asynchronous save copies the rank's shards into staging memory (one
 * device-to-host copy per parameter; on the CPU device without the distributed optimizer the writer thread
 * makes this copy while the next step's forward and backward run, and that step's updates wait for it
 * through {@link org.sparkatron.model.ParameterSet#awaitReaders}; elsewhere the training thread makes it, and
 * it is the only time the step waits), writes the files from the copy on a background thread while training
 * goes on, and is committed through {@link #poll} (every step) or {@link #finish}: at the first poll that
 * finds every rank's files written, rank 0's writer thread writes the metadata with every file's size and CRC32C,
 * renames the directory into place and deletes checkpoints beyond the newest K, exactly as a blocking save does
 * on the training thread; a later poll tells every rank the outcome. A crash before the rename leaves an
 * {@code .inprogress-} directory that resume ignores (and the next save deletes), so the previous checkpoint
 * stays the newest usable one: the atomicity, CRC and fallback guarantees are those of
 * {@link DistributedCheckpoint#save}, which is this class in blocking mode.
 *
 * <p>With the distributed optimizer (a sharded {@link AdamW}) the fp32 master weights and moments are first
 * all-gathered over the data-parallel group (the gradient block and one temporary block hold the moments until
 * they are copied or written), so the files are those of plain data parallelism and load under any layout.
 *
 * <p>Memory: an asynchronous save keeps a copy of what this rank writes (its model and/or optimizer shard)
 * in host memory, allocated at the first save and reused; it is the price of not waiting for the disk.
 *
 * <p>Threading, blocking, failure: one instance per rank, used from the rank's training thread. {@link #start},
 * {@link #poll} and {@link #finish} are collectives over the world communicator (every rank calls them at the
 * same points); {@code start} first finishes a save still in flight. The writer thread is this instance's own
 * (it ends after a few idle seconds, and at {@link #close}). A rank that fails to write makes every rank's
 * {@code poll}/{@code finish} throw {@link IOException} naming it; nothing is committed and earlier
 * checkpoints stay untouched. A commit that fails on rank 0's writer thread (the metadata, the rename, or deleting
 * old checkpoints) makes every rank's next {@code poll}/{@code finish} (or {@code start}, which finishes first)
 * throw it; {@link #close} abandons a save in flight and its outcome.
 */
public final class AsyncCheckpointer implements AutoCloseable {
    /** A rank's report of its files: {error, model file: written, bytes, CRC, optimizer file: 3, step, expert model: 3, expert optimizer: 3}. */
    private static final int ROW = 14;
    private final DistributedCheckpoint ckpt;
    private final boolean async;
    private final ThreadPoolExecutor writer;
    private Tensor staging; // guarded by this: the training thread or the writer allocates it
    private Pending pending;
    /** Once every rank's files are written: rank 0's commit on the writer thread (its error, or null), done elsewhere. */
    private Future<String> committing;
    /** A blocking save's directory, committed on the training thread. */
    private String committedDir;
    /** The writer's copy of the save in flight (counted down when done), or null. */
    private java.util.concurrent.CountDownLatch pendingCopy;
    /** The last write's {wall, writer thread CPU} nanoseconds, for the benchmark; written by the writer thread. */
    private volatile long[] lastWrite = {0, 0};
    /** Tests: the writer thread's first action for each save (to hold it before it copies or writes). */
    volatile Runnable writerStartsForTest;

    /** A save whose files are being written. */
    private record Pending(long step, long dropoutSteps, String tmp, Future<long[]> written, Transformer model,
                           CheckpointLayout layout, long[] positions, Map<String, String> extra) {
    }

    /**
     * @param async true: save in the background ({@link #start} returns after the copy); false: {@link #start}
     *     writes the files itself from the live state (no copy), and {@link #finish} commits
     */
    public AsyncCheckpointer(DistributedCheckpoint ckpt, boolean async) {
        this.ckpt = ckpt;
        this.async = async;
        if (async) {
            writer = new ThreadPoolExecutor(1, 1, 5, TimeUnit.SECONDS, new LinkedBlockingQueue<>(), r -> {
                Thread t = new Thread(r, "sparkatron-checkpoint-writer");
                t.setDaemon(true);
                return t;
            });
            writer.allowCoreThreadTimeOut(true);
        } else {
            writer = null;
        }
    }

    public boolean isAsync() {
        return async;
    }

    /** Whether a save is in flight (started, not yet committed). */
    public boolean pending() {
        return pending != null;
    }

    /**
     * Begins saving this rank's part of the training state as step {@code opt.step()}; collective over
     * {@code world} (a TP x DP layout: world rank = tp + TP x dp). Finishes a save still in flight first.
     * Asynchronous: returns once the state is copied; blocking: once this rank's files are written.
     *
     * @param consumed this rank's data position (samples its source handed out)
     * @param extra free-form strings kept in the metadata; the same on every rank
     * @throws IOException if the checkpoint directory cannot be prepared (on every rank)
     */
    /**
     * The metadata's {@code extra} key holding the CPU thread budget per rank a CPU run saved with
     * ({@link org.sparkatron.device.cpu.Blas#threads()}): a resume with another count continues correctly but not
     * bit for bit, since a large GEMM's last bits depend on the thread count.
     */
    public static final String CPU_THREADS_KEY = "cpu_threads_per_rank";

    public void start(Communicator world, int dpSize, Transformer model, AdamW opt, long consumed, Map<String, String> extra)
            throws IOException {
        if (pending != null) {
            finish(world);
        }
        Map<String, String> kept = new java.util.LinkedHashMap<>(extra == null ? Map.of() : extra);
        if (model.fp8() != null) { // the FP8 recipe state of this step (the same on every rank), taken now, not at the commit
            kept.put(org.sparkatron.precision.Fp8State.CHECKPOINT_KEY, model.fp8().saveState());
        }
        if (model.device() instanceof org.sparkatron.device.cpu.CpuDevice) { // a GEMM's last bits depend on it
            kept.put(CPU_THREADS_KEY, Integer.toString(org.sparkatron.device.cpu.Blas.threads()));
        }
        extra = kept;
        int tpSize = model.tensorParallel().size();
        int tpRank = model.tensorParallel().rank();
        int ppSize = model.pipeline().size();
        int stage = model.pipeline().stage();
        int cpSize = model.contextParallel().size();
        if (world.size() != tpSize * cpSize * dpSize * ppSize) {
            throw new IllegalArgumentException("world of " + world.size() + " ranks is not TP " + tpSize + " x CP " + cpSize
                    + " x DP " + dpSize + " x PP " + ppSize
                    + ": checkpoints support tensor x context x data x pipeline parallel layouts");
        }
        int epSize = model.expertParallel().size();
        int epRank = model.expertParallel().rank();
        CheckpointLayout lay = new CheckpointLayout(tpSize, cpSize, dpSize, ppSize, epSize);
        // the CP x DP ranks of a TP shard and stage hold the same weights and moments: they share the writing
        int replica = world.rank() / tpSize % (cpSize * dpSize);
        int dpRank = replica / cpSize;
        if (dpRank % epSize != epRank) {
            throw new IllegalArgumentException("world rank " + world.rank() + " is replica " + dpRank + " but EP rank " + epRank
                    + " of " + epSize + ": checkpoints need EP ranks to be consecutive replicas (ParallelLayout's order)");
        }
        long step = opt.step();
        String tmp = ckpt.storage().child(ckpt.root(), DistributedCheckpoint.IN_PROGRESS + DistributedCheckpoint.dirName(step));
        String prepError = null;
        if (world.rank() == 0) {
            try {
                ckpt.storage().mkdirs(ckpt.root());
                ckpt.storage().delete(tmp); // a crashed earlier attempt at the same step
                ckpt.storage().mkdirs(tmp);
            } catch (IOException | RuntimeException e) {
                prepError = "rank 0 could not create " + tmp + ": " + e;
            }
        }
        long[][] rows = DistributedCheckpoint.gatherRows(world, new long[] {prepError == null ? 0 : 1, step, consumed});
        for (int r = 0; r < rows.length; r++) {
            if (rows[r][0] != 0) {
                throw new IOException(prepError != null ? prepError : "rank 0 failed to prepare " + tmp + " (see its log)");
            }
            if (rows[r][1] != step) {
                throw new IllegalStateException("ranks disagree on the step to save: rank " + r + " is at " + rows[r][1]
                        + ", rank " + world.rank() + " at " + step);
            }
        }
        long[] positions = new long[rows.length];
        for (int r = 0; r < rows.length; r++) {
            positions[r] = rows[r][2];
        }
        // The distributed optimizer keeps a shard of the state: the whole (fp32 master weights, moments by
        // parameter) is all-gathered first, so the files are those of plain data parallelism and load at any DP
        // size. The gradient block (zeroed by the next step) holds m; v takes a temporary block until the copy
        // (asynchronous) or the write (blocking) is done, at the end of this method.
        model.finishParamGather(); // overlap_param_gather: the last step's all-gather, before the weights are read
        Tensor weights = model.params().weights();
        Tensor mBlock = opt.firstMoment();
        Tensor vBlock = opt.secondMoment();
        Tensor temporary = null;
        if (opt.sharded()) {
            DistributedDataParallel ddp = DistributedCheckpoint.shardedBy(model);
            if (opt.masterWeights() != null) { // the weight block holds the 16-bit rounding until the next forward
                opt.writeMasterWeights();
                ddp.gatherParams(weights);
            }
            mBlock = model.params().grads();
            DistributedOptimizer.gatherState(opt, ddp, opt.firstMoment(), mBlock);
            temporary = model.device().allocate(MemoryKind.OPTIMIZER, DType.F32, model.params().numel());
            vBlock = temporary;
            DistributedOptimizer.gatherState(opt, ddp, opt.secondMoment(), vBlock);
        }
        Tensor[] blocks = {weights, mBlock, vBlock};
        // up to four files: the dense model and optimizer shards, and under EP > 1 the experts' (CheckpointLayout)
        Boolean dense = lay.separateExperts() ? Boolean.FALSE : null; // null: every parameter
        List<ShardFilePart> parts = new ArrayList<>();
        if (lay.writesModel(tpRank, replica)) {
            parts.add(new ShardFilePart(lay.modelFile(stage, tpRank), 1, model, dense, false));
        }
        if (lay.writesOptim(tpRank, replica)) {
            parts.add(new ShardFilePart(lay.optimFile(stage, tpRank), 4, model, dense, true));
        }
        if (lay.writesExpertModel(tpRank, dpRank)) {
            parts.add(new ShardFilePart(lay.expertModelFile(stage, epRank, tpRank), 8, model, true, false));
        }
        if (lay.writesExpertOptim(tpRank, dpRank)) {
            parts.add(new ShardFilePart(lay.expertOptimFile(stage, epRank, tpRank), 11, model, true, true));
        }
        Device dev = model.device();
        // On the CPU device the blocks are host memory and the live weights and moments change only in the next
        // step's updates (Trainer, AdamW and the expert-bias update wait for ParameterSet.awaitReaders): the writer
        // thread copies them while the next forward and backward run, and training does not wait for the copy.
        // Elsewhere (a GPU; the strict test device; the distributed optimizer, whose gathered moments live in the
        // gradient block and a temporary, and whose 16-bit weight block the next pass replaces) the training
        // thread copies them here. (Without the distributed optimizer the weight block is the fp32 master, never
        // replaced: the 16-bit compute copy is a separate tensor.)
        boolean copyOnWriter = async && temporary == null && weights.dtype() == DType.F32
                && dev instanceof org.sparkatron.device.cpu.CpuDevice cpu && !cpu.isStrict();
        long need = 0;
        for (ShardFilePart f : parts) {
            need += f.numel();
        }
        String error = null;
        try {
            if (!async) {
                for (ShardFilePart f : parts) {
                    f.views(dev, blocks);
                }
            } else if (!copyOnWriter) {
                Tensor buf = staging(dev, need);
                long at = 0;
                for (ShardFilePart f : parts) {
                    at = f.copy(dev, blocks, buf, at);
                }
            }
        } catch (RuntimeException e) {
            error = "rank " + world.rank() + " could not copy its state for step " + step + ": " + e;
        }
        String failure = error;
        long stagingNumel = need;
        java.util.concurrent.CountDownLatch copied = copyOnWriter ? new java.util.concurrent.CountDownLatch(1) : null;
        int rank = world.rank();
        java.util.concurrent.Callable<long[]> write = () -> {
            try {
                Runnable hook = writerStartsForTest;
                if (hook != null) {
                    hook.run();
                }
                if (failure != null) {
                    throw new IOException(failure);
                }
                if (copied != null) {
                    try {
                        Tensor buf = staging(dev, stagingNumel); // the first save's allocation too is off the training thread
                        long at = 0;
                        for (ShardFilePart f : parts) {
                            at = f.copyOnHost(blocks, buf, at);
                        }
                    } catch (RuntimeException e) {
                        throw new IOException("rank " + rank + " could not copy its state for step " + step + ": " + e, e);
                    } finally {
                        copied.countDown(); // training may change the state now
                    }
                }
                return writeFiles(parts, tmp, step);
            } finally {
                if (copied != null) {
                    copied.countDown(); // whatever failed: training never waits for a save that will not copy
                }
            }
        };
        Future<long[]> written;
        if (async) {
            if (copied != null) {
                model.params().holdUpdatesUntil(copied);
            }
            pendingCopy = copied;
            try {
                written = writer.submit(write);
            } catch (RuntimeException e) { // rejected: the writer was closed
                if (copied != null) {
                    copied.countDown();
                }
                throw e;
            }
        } else {
            java.util.concurrent.FutureTask<long[]> now = new java.util.concurrent.FutureTask<>(write);
            now.run();
            written = now;
        }
        if (temporary != null) { // copied (asynchronous) or written (blocking)
            dev.release(temporary);
        }
        // Everything the metadata records is taken now, with the copy: training changes it meanwhile.
        pending = new Pending(step, model.trainSteps(), tmp, written, model, lay, positions, extra);
    }

    /** The staging memory, at least {@code numel} floats: kept from the first asynchronous save on. */
    private synchronized Tensor staging(Device dev, long numel) {
        if (staging == null || staging.numel() < numel) {
            staging = dev.allocateHostStaging(DType.F32, Math.max(1, numel));
        }
        return staging;
    }

    /** Writes this rank's files of a save and returns its row of sizes and checksums (any thread). */
    private long[] writeFiles(List<ShardFilePart> parts, String tmp, long step) throws IOException {
        long[] row = new long[ROW];
        row[7] = step;
        long wall0 = System.nanoTime();
        long cpu0 = java.lang.management.ManagementFactory.getThreadMXBean().getCurrentThreadCpuTime();
        for (ShardFilePart f : parts) {
            ShardFiles.Written w = ShardFiles.write(ckpt.storage(), ckpt.storage().child(tmp, f.file()), f.tensors(),
                    Map.of("step", "" + step));
            row[f.slot()] = 1;
            row[f.slot() + 1] = w.bytes();
            row[f.slot() + 2] = w.crc();
        }
        lastWrite = new long[] {System.nanoTime() - wall0,
            java.lang.management.ManagementFactory.getThreadMXBean().getCurrentThreadCpuTime() - cpu0};
        return row;
    }

    /**
     * Advances the save in flight without waiting: once every rank has written its files, rank 0's writer thread
     * commits it, and a later poll returns its directory; collective (one small all-gather) while a save is in
     * flight, nothing otherwise.
     *
     * @return the committed checkpoint directory (once, at the poll that learns of the commit), or null
     * @throws IOException if a rank failed to write (on every rank), or the commit failed
     */
    public String poll(Communicator world) throws IOException {
        return pending == null ? null : complete(world, false);
    }

    /**
     * Waits for this rank's files and for the commit of the save in flight; collective. Returns the committed
     * directory, or null when no save was in flight.
     *
     * @throws IOException if a rank failed to write (on every rank), or the commit failed
     */
    public String finish(Communicator world) throws IOException {
        return pending == null ? null : complete(world, true);
    }

    private String complete(Communicator world, boolean block) throws IOException {
        if (committing == null) {
            if (!collectWritten(world, block)) {
                return null; // someone is still writing: try again at the next poll
            }
            if (!block && committing != null) {
                return null; // rank 0's writer has just begun the commit: its outcome is for the next poll
            }
        }
        return committed(world, block);
    }

    /**
     * The first half of a commit: every rank reports whether its files are written (one all-gather). Once all are,
     * rank 0 hands the metadata, the rename and the pruning to its writer thread ({@link #committed} learns the
     * outcome); a blocking save commits on this thread instead. Returns whether the files are all written.
     */
    private boolean collectWritten(Communicator world, boolean block) throws IOException {
        Pending p = pending;
        long[] mine = new long[ROW + 1];
        String error = null;
        if (block || p.written().isDone()) {
            mine[0] = 1;
            try {
                System.arraycopy(p.written().get(), 0, mine, 1, ROW);
            } catch (ExecutionException e) {
                Throwable c = e.getCause();
                error = c.getMessage() != null && c.getMessage().startsWith("rank ") ? c.getMessage()
                        : "rank " + world.rank() + " could not write its shards to " + p.tmp() + ": " + c;
                mine[1] = 1;
                mine[8] = p.step(); // the row's step (row[7])
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted while waiting for the checkpoint of step " + p.step() + " to be written", e);
            }
        }
        long[][] all = DistributedCheckpoint.gatherRows(world, mine);
        List<String> failed = new ArrayList<>();
        for (int r = 0; r < all.length; r++) {
            if (all[r][0] == 0) {
                return false;
            }
            if (all[r][1] != 0) {
                failed.add("" + r);
            }
        }
        if (!failed.isEmpty()) {
            pending = null;
            throw new IOException(error != null ? error : "checkpoint of step " + p.step() + " not saved: rank(s) " + failed
                    + " failed to write (see their logs); earlier checkpoints are untouched");
        }
        long[][] rows = new long[all.length][];
        for (int r = 0; r < all.length; r++) {
            rows[r] = Arrays.copyOfRange(all[r], 1, ROW + 1);
        }
        if (!async) {
            pending = null;
            committedDir = ckpt.commitSave(world, p.model(), p.step(), p.dropoutSteps(), p.tmp(), p.layout(), rows, p.positions(),
                    p.extra());
            return true;
        }
        DistributedCheckpoint.requireStep(world, rows, p.step());
        java.util.concurrent.Callable<String> commit = () -> {
            String failure = ckpt.publish(p.model(), p.step(), p.dropoutSteps(), p.tmp(), p.layout(), rows, p.positions(), p.extra());
            if (failure != null) {
                return failure;
            }
            try {
                ckpt.prune();
                return null;
            } catch (IOException | RuntimeException e) {
                return "checkpoint " + ckpt.dir(p.step()) + " was committed, but rank 0 could not delete older checkpoints: " + e;
            }
        };
        committing = world.rank() == 0 ? writer.submit(commit) : java.util.concurrent.CompletableFuture.completedFuture(null);
        return true;
    }

    /**
     * The second half: every rank learns whether rank 0's commit is done and how it went (one all-gather); a blocking
     * call waits for it. Returns the committed directory, or null while rank 0 is still committing.
     *
     * @throws IOException on every rank when rank 0's commit failed
     */
    private String committed(Communicator world, boolean block) throws IOException {
        Pending p = pending;
        if (committing == null) { // a blocking save, committed on this thread
            String dir = committedDir;
            committedDir = null;
            return dir;
        }
        String error = null;
        long state = 0; // 0: committing, 1: committed, 2: failed
        if (block || committing.isDone()) {
            try {
                error = committing.get();
            } catch (ExecutionException e) {
                error = "rank 0 could not commit " + ckpt.dir(p.step()) + ": " + e.getCause();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted while waiting for the checkpoint of step " + p.step() + " to be committed", e);
            }
            state = error == null ? 1 : 2;
        }
        long[] all = DistributedCheckpoint.gatherFlat(world, new long[] {state});
        if (all[0] == 0) {
            return null;
        }
        pending = null;
        committing = null;
        if (all[0] == 2) {
            throw new IOException(error != null ? error : "rank 0 could not commit " + ckpt.dir(p.step()) + " (see its log)");
        }
        return ckpt.dir(p.step());
    }

    /** The last completed write's {wall, CPU of the writing thread} in nanoseconds (for the benchmark). */
    long[] lastWriteTimes() {
        return lastWrite.clone();
    }

    /**
     * Stops the writer thread (interrupting its I/O) and waits up to 30 s for it to end, so that an abandoned
     * write cannot touch the directory of a later attempt's save of the same step; a save still in flight is
     * abandoned (it never commits; resume ignores it).
     */
    @Override
    public void close() {
        pending = null;
        committing = null;
        if (pendingCopy != null) { // an abandoned save never holds training's next update
            pendingCopy.countDown();
        }
        if (writer != null) {
            writer.shutdownNow();
            try {
                writer.awaitTermination(30, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
