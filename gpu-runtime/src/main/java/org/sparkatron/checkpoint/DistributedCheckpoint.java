package org.sparkatron.checkpoint;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.function.Consumer;
import org.sparkatron.comm.Communicator;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.AdamW;
import org.sparkatron.parallel.DistributedDataParallel;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Sharded training checkpoints under one root directory on any {@link CheckpointStorage}: save (every rank
 * writes only what it owns, in parallel), load under any tensor-parallel layout (each rank reads the global
 * element runs it needs), automatic resume from the newest usable checkpoint, and keeping the last K.
 * With the distributed optimizer (a sharded {@link AdamW}) the fp32 master weights and moments are
 * all-gathered over the data-parallel group before the write (device memory for one more parameter block,
 * briefly), so the files are the same as without it and load under any TP, PP and DP layout, with or
 * without the distributed optimizer; a load stages the whole moments of the rank's parameters in two
 * temporary blocks and keeps its shard.
 *
 * <h2>Layout on storage</h2>
 * <pre>
 * ROOT/step-00000100/metadata.json               written last (see {@link CheckpointMetadata})
 * ROOT/step-00000100/model-tp00-of02.safetensors TP rank 0's parameter shards (+ the replicated parameters)
 * ROOT/step-00000100/optim-tp00-of02.safetensors TP rank 0's AdamW m and v shards
 * ROOT/step-00000100/model-pp01of04-tp00-of02.safetensors  with pipeline parallelism: per stage and TP rank
 * ROOT/step-00000100/model-experts-ep01of02-tp00-of02.safetensors  with expert parallelism: per EP and TP rank
 * ROOT/.inprogress-step-00000200/...             a save under way (or one that crashed: ignored, cleaned up)
 * </pre>
 * With data parallelism, replica {@code t mod dp} writes TP rank t's model file and replica
 * {@code (t + 1) mod dp} its optimizer file, so the writes spread over the replicas and no shard is
 * written twice. Context parallelism changes no shard (its ranks hold the same weights and moments, their
 * gradients reduced over DP x CP as Megatron does): the CP x DP ranks of a shard share the writing as the DP
 * replicas alone would, and a checkpoint resumes at any CP size. Parameters replicated over the TP group are
 * written once, by TP rank 0. Each pipeline
 * stage writes its own layers; a tied embedding's copy on the last stage is not written (it equals the
 * first stage's, and loads from it). Tensors are described in their global (TP = 1) shapes by name, so a
 * checkpoint loads under any TP, CP, PP and DP layout.
 *
 * <h2>Atomicity</h2>
 * A save writes under {@code .inprogress-step-N}; rank 0 writes the metadata (sizes and CRC32C of every
 * file) after all ranks reported success, then renames the directory to {@code step-N}. A crash at any
 * point leaves the earlier checkpoints untouched; a directory without metadata, or whose files do not
 * match their recorded size and checksum, is refused by name, and {@link #resume} falls back to the
 * previous checkpoint and says so. Only after the commit does rank 0 delete checkpoints beyond the last
 * {@code keep}.
 *
 * <h2>Threading, blocking, failure</h2>
 * {@link #save} and {@link #resume} are collectives over the world communicator of a TP x CP x DP x PP layout
 * (world rank = tp + TP x (cp + CP x (dp + DP x pp)), as {@code ParallelLayout} orders them; every rank calls them in
 * the same order) and block on I/O and communication. A rank
 * that fails to write makes every rank's save throw (the ranks agree on the outcome before committing),
 * instead of hanging. {@link #load} is local to one rank. Instances hold no per-rank state: ranks of one
 * JVM may share one.
 */
public final class DistributedCheckpoint {
    public static final String PREFIX = "step-";
    public static final String IN_PROGRESS = ".inprogress-";
    private static final String REPLACED = ".replaced-";
    private final CheckpointStorage fs;
    private final String root;
    private final int keep;

    /**
     * @param keep complete checkpoints to keep (older ones are deleted after each save), at least 1
     */
    public DistributedCheckpoint(CheckpointStorage fs, String root, int keep) {
        if (keep < 1) {
            throw new IllegalArgumentException("keep must be >= 1 checkpoint, got " + keep);
        }
        this.fs = fs;
        this.root = root;
        this.keep = keep;
    }

    public CheckpointStorage storage() {
        return fs;
    }

    public String root() {
        return root;
    }

    /** The directory of step {@code step}'s checkpoint. */
    public String dir(long step) {
        return fs.child(root, dirName(step));
    }

    public static String dirName(long step) {
        return String.format(Locale.ROOT, PREFIX + "%08d", step);
    }

    /** Steps of the committed checkpoint directories under the root, newest first (their contents unchecked). */
    public List<Long> committedSteps() throws IOException {
        List<Long> out = new ArrayList<>();
        for (String n : fs.list(root)) {
            if (n.startsWith(PREFIX) && n.length() > PREFIX.length() && n.substring(PREFIX.length()).chars().allMatch(Character::isDigit)) {
                out.add(Long.parseLong(n.substring(PREFIX.length())));
            }
        }
        out.sort(Collections.reverseOrder());
        return out;
    }

    /**
     * Saves this rank's part of the training state as step {@code opt.step()}; collective over {@code world}.
     *
     * @param consumed this rank's data position (samples its source handed out)
     * @param extra free-form strings kept in the metadata (e.g. seeds, the job's options); same on every rank
     * @return the committed checkpoint directory
     * @throws IOException if any rank failed to write (on every rank), or the commit failed
     */
    public String save(Communicator world, int dpSize, Transformer model, AdamW opt, long consumed, Map<String, String> extra)
            throws IOException {
        try (AsyncCheckpointer blocking = new AsyncCheckpointer(this, false)) {
            blocking.start(world, dpSize, model, opt, consumed, extra);
            return blocking.finish(world);
        }
    }

    /**
     * The commit of a save whose files every rank has written ({@code rows}: per rank {error, has model file,
     * its bytes, its CRC, has optimizer file, bytes, CRC, step, and the same six for the expert files}): rank 0 writes the metadata and renames
     * the directory into place; every rank learns the outcome; rank 0 then prunes. Collective, on the calling thread.
     */
    String commitSave(Communicator world, Transformer model, long step, long dropoutSteps, String tmp, CheckpointLayout lay,
                      long[][] rows, long[] positions, Map<String, String> extra) throws IOException {
        requireStep(world, rows, step);
        String commitError = null;
        String fin = dir(step);
        if (world.rank() == 0) {
            commitError = publish(model, step, dropoutSteps, tmp, lay, rows, positions, extra);
        }
        agree(world, commitError == null, commitError, "commit " + fin);
        if (world.rank() == 0) {
            prune();
        }
        return fin;
    }

    /** Every rank's row is for {@code step}. */
    static void requireStep(Communicator world, long[][] rows, long step) {
        for (int r = 0; r < rows.length; r++) {
            if (rows[r][7] != step) {
                throw new IllegalStateException("ranks disagree on the step to save: rank " + r + " is at " + rows[r][7]
                        + ", rank " + world.rank() + " at " + step);
            }
        }
    }

    /**
     * Rank 0's part of a commit, on any thread: writes the metadata (durably: {@link CheckpointStorage#create}'s close)
     * and renames {@code tmp} to the step's directory. Until the rename the save is an {@code .inprogress-} directory,
     * which resume ignores, so a crash at any point leaves the previous checkpoint the newest usable one.
     *
     * @return null when committed, else the error (the directory is left aside, uncommitted)
     */
    String publish(Transformer model, long step, long dropoutSteps, String tmp, CheckpointLayout lay, long[][] rows,
                   long[] positions, Map<String, String> extra) {
        String fin = dir(step);
        try {
            CheckpointMetadata meta = lay.describe(model, step, dropoutSteps, rows, positions, extra);
            ShardFiles.writeSmall(fs, fs.child(tmp, CheckpointMetadata.FILE), meta.toJson());
            commit(tmp, fin);
            return null;
        } catch (IOException | RuntimeException e) {
            return "rank 0 could not commit " + fin + ": " + e;
        }
    }

    /**
     * Reads and validates the metadata of the checkpoint in {@code dir} (no shard is opened).
     *
     * @throws CheckpointException if the directory has no metadata (an incomplete save) or it is malformed
     */
    public CheckpointMetadata metadata(String dir) throws IOException {
        String path = fs.child(dir, CheckpointMetadata.FILE);
        if (!fs.exists(dir)) {
            throw new CheckpointException(dir + ": no such checkpoint directory", false);
        }
        if (!fs.exists(path)) {
            throw new CheckpointException(path + ": missing: the checkpoint is incomplete (its save never committed)", true);
        }
        return CheckpointMetadata.parse(ShardFiles.readSmall(fs, path), path);
    }

    /**
     * Loads a checkpoint into this rank's model (and optimizer moments and step, unless {@code opt} is null),
     * whatever the TP layout it was saved with; also restores the dropout counter. Reads every file it needs once,
     * straight into the model's blocks, checking its size and CRC32C as it goes; nothing else (step, counter) changes
     * unless all are intact. Local to this rank (no communication); the data position is the caller's (see
     * {@link CheckpointMetadata#dataPositions()}).
     *
     * @throws CheckpointException naming the file and problem for a damaged or mismatched checkpoint; when a file
     *     was damaged the weights and moments hold unspecified values (load a checkpoint over them, or discard them)
     */
    public CheckpointMetadata load(String dir, Transformer model, AdamW opt) throws IOException {
        CheckpointMetadata meta = metadata(dir);
        meta.requireModel(model.config(), dir);
        ShardReader reader = new ShardReader(dir, meta, model, opt != null);
        return CheckpointLoad.read(fs, dir, meta, reader, model, opt).finish();
    }

    /**
     * Automatic resume, collective over {@code world}: every rank reads the newest committed checkpoint
     * (metadata, model match, size and CRC32C of the files it needs, checked as they are read); if every rank read
     * it intact, all take it; if any found damage, all fall back to the next older one (read over the first), and
     * {@code log} says which and why. A checkpoint for another model is never skipped silently: every rank throws.
     *
     * @return the loaded checkpoint's metadata, or empty when the root holds no committed checkpoint
     * @throws CheckpointException when checkpoints exist but none is usable (naming each problem), or one
     *     is for another model; then the model's weights and moments hold unspecified values
     */
    public java.util.Optional<CheckpointMetadata> resume(Communicator world, Transformer model, AdamW opt, Consumer<String> log)
            throws IOException {
        List<Long> steps = committedSteps();
        long[] counts = gatherFlat(world, new long[] {steps.size(), steps.isEmpty() ? -1 : steps.get(0)});
        for (int r = 0; r < world.size(); r++) {
            if (counts[2 * r] != steps.size() || counts[2 * r + 1] != (steps.isEmpty() ? -1 : steps.get(0))) {
                throw new IOException("ranks see different checkpoints under " + root + ": rank " + r + " sees " + counts[2 * r]
                        + " (newest " + counts[2 * r + 1] + "), rank " + world.rank() + " sees " + steps.size()
                        + "; is the directory shared by all executors?");
            }
        }
        List<String> problems = new ArrayList<>();
        for (long step : steps) {
            String dir = dir(step);
            CheckpointLoad loaded = null;
            String problem = null;
            int status = 0;
            try {
                CheckpointMetadata meta = metadata(dir);
                meta.requireModel(model.config(), dir);
                ShardReader reader = new ShardReader(dir, meta, model, opt != null);
                loaded = CheckpointLoad.read(fs, dir, meta, reader, model, opt);
            } catch (CheckpointException e) {
                problem = e.getMessage();
                status = e.fallbackAllowed() ? 1 : 2;
            } catch (IOException | RuntimeException e) {
                problem = dir + ": " + e;
                status = 1;
            }
            long[][] all = gatherRows(world, new long[] {step, status});
            int worst = 0;
            int worstRank = -1;
            for (int r = 0; r < all.length; r++) {
                if (all[r][0] != step) {
                    if (loaded != null) {
                        loaded.abandon();
                    }
                    throw new IOException("ranks disagree on the checkpoint to try: rank " + r + " tried step " + all[r][0]
                            + ", rank " + world.rank() + " step " + step);
                }
                if (all[r][1] > worst) {
                    worst = (int) all[r][1];
                    worstRank = r;
                }
            }
            if (worst == 0) {
                return java.util.Optional.of(loaded.finish());
            }
            if (loaded != null) {
                loaded.abandon();
            }
            String why = problem != null ? problem : dir + " unusable on rank " + worstRank + " (see its log)";
            if (worst == 2) {
                throw new CheckpointException(why, false);
            }
            problems.add(why);
            log.accept("checkpoint " + dir + " is unusable (" + why + "); falling back to the previous checkpoint");
        }
        if (!problems.isEmpty()) {
            throw new CheckpointException("no usable checkpoint under " + root + ": " + String.join("; ", problems), false);
        }
        return java.util.Optional.empty();
    }

    /** The data parallelism whose shards a sharded optimizer holds (the model's). */
    static DistributedDataParallel shardedBy(Transformer model) {
        DistributedDataParallel ddp = model.dataParallel();
        if (ddp == null || !ddp.sharded()) {
            throw new IllegalArgumentException("a sharded optimizer belongs to a model built with the distributed optimizer");
        }
        return ddp;
    }

    /** Renames the finished directory into place; a bad leftover with the same step is moved aside first. */
    private void commit(String tmp, String fin) throws IOException {
        String aside = null;
        if (fs.exists(fin)) {
            aside = fs.child(root, REPLACED + System.nanoTime() + "-" + fin.substring(fin.lastIndexOf(PREFIX)));
            fs.rename(fin, aside);
        }
        fs.rename(tmp, fin);
        if (aside != null) {
            fs.delete(aside);
        }
    }

    /** Deletes committed checkpoints beyond the newest {@code keep}, and leftovers of crashed saves. Any thread. */
    void prune() throws IOException {
        List<Long> steps = committedSteps();
        for (int i = keep; i < steps.size(); i++) {
            fs.delete(dir(steps.get(i)));
        }
        for (String n : fs.list(root)) {
            if (n.startsWith(IN_PROGRESS) || n.startsWith(REPLACED)) {
                fs.delete(fs.child(root, n));
            }
        }
    }

    /** Every rank learns whether every rank succeeded; all throw together if one did not. */
    static void agree(Communicator world, boolean ok, String error, String what) throws IOException {
        long[] all = gatherFlat(world, new long[] {ok ? 0 : 1});
        for (int r = 0; r < all.length; r++) {
            if (all[r] != 0) {
                throw new IOException(error != null ? error : "rank " + r + " failed to " + what + " (see its log)");
            }
        }
    }

    /** Every rank's {@code mine}, concatenated in rank order. Collective. */
    static long[] gatherFlat(Communicator world, long[] mine) {
        Tensor in = Tensor.allocateHost(DType.I64, mine.length);
        in.hostBuffer().asLongBuffer().put(mine);
        Tensor out = Tensor.allocateHost(DType.I64, mine.length * world.size());
        world.allGather(in, out);
        long[] r = new long[mine.length * world.size()];
        out.hostBuffer().asLongBuffer().get(r);
        return r;
    }

    /** Every rank's {@code mine}, one row per rank. Collective. */
    static long[][] gatherRows(Communicator world, long[] mine) {
        long[] flat = gatherFlat(world, mine);
        long[][] out = new long[world.size()][];
        for (int r = 0; r < out.length; r++) {
            out[r] = java.util.Arrays.copyOfRange(flat, r * mine.length, (r + 1) * mine.length);
        }
        return out;
    }
}
