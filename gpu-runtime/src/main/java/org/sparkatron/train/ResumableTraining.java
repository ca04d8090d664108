package org.sparkatron.train;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.function.Consumer;
import org.sparkatron.checkpoint.AsyncCheckpointer;
import org.sparkatron.checkpoint.CheckpointMetadata;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.comm.Communicator;

/**
 * A {@link Trainer} that checkpoints: {@link #resume} restores the newest usable checkpoint under the
 * checkpoint root (weights, AdamW moments and step, dropout counter, data position), or with
 * {@code startOver} deletes the root's checkpoints and starts fresh; {@link #run} trains up to a total
 * step count, saving every {@code saveEvery} steps and after the last one. A run interrupted at any
 * point and restarted this way computes exactly what the uninterrupted run computes (the model, optimizer
 * and data are deterministic), losing at most the steps since the last checkpoint.
 *
 * <p>Data position on resume: this data-parallel replica's recorded position when the layout's DP size
 * is unchanged; otherwise the global consumed count divided over the new replicas.
 *
 * <p>Threading and blocking: the rank's training thread; {@link #resume}, {@link #run}, {@link #save} and
 * {@link #afterStep} are collectives over {@code world} (all ranks call them together) and block on I/O and
 * communication (with asynchronous saves: on the copy of the state, and on the final save). {@link #close}
 * stops the background writer.
 */
public final class ResumableTraining implements AutoCloseable {
    /**
     * @param saveEvery steps between checkpoints (0: only at the end)
     * @param startOver ignore and delete existing checkpoints instead of resuming from them
     * @param extra strings recorded in each checkpoint's metadata
     * @param async save in the background (Megatron's {@code --async-save}): a save started after step N
     *     copies the state and training goes on; it is committed at the first later step where every rank
     *     has written its files, at the latest when the next save starts or training ends. The final save
     *     is always waited for.
     */
    public record Options(int saveEvery, boolean startOver, Map<String, String> extra, boolean async) {
        public Options {
            if (saveEvery < 0) {
                throw new IllegalArgumentException("checkpoint interval must be >= 0 steps, got " + saveEvery);
            }
            extra = extra == null ? Map.of() : Map.copyOf(extra);
        }

        /** Blocking saves. */
        public Options(int saveEvery, boolean startOver, Map<String, String> extra) {
            this(saveEvery, startOver, extra, false);
        }
    }

    private final Trainer trainer;
    private final DistributedCheckpoint ckpt;
    private final Communicator world;
    private final int dpSize;
    private final int dpRank;
    private final Options opt;
    private final Consumer<String> log;
    private final AsyncCheckpointer saver;

    /**
     * @param world all ranks of a TP x CP x DP x PP layout (world rank = tp + TP x (cp + CP x (dp + DP x pp)))
     * @param log where resume decisions (fresh start, resumed step, fallbacks) are reported
     */
    public ResumableTraining(Trainer trainer, DistributedCheckpoint ckpt, Communicator world, int dpSize, Options opt,
                             Consumer<String> log) {
        int tp = trainer.model().tensorParallel().size();
        int pp = trainer.model().pipeline().size();
        int cp = trainer.model().contextParallel().size();
        if (world.size() != tp * cp * dpSize * pp) {
            throw new IllegalArgumentException("world of " + world.size() + " ranks is not TP " + tp + " x CP " + cp + " x DP "
                    + dpSize + " x PP " + pp);
        }
        this.trainer = trainer;
        this.ckpt = ckpt;
        this.world = world;
        this.dpSize = dpSize;
        this.dpRank = world.rank() / (tp * cp) % dpSize;
        this.opt = opt;
        this.log = log;
        this.saver = new AsyncCheckpointer(ckpt, opt.async());
    }

    /**
     * Restores the newest usable checkpoint (falling back past damaged ones, saying so), or starts over.
     *
     * @return the step training continues after (0 for a fresh start)
     */
    public long resume() throws IOException {
        if (opt.startOver()) {
            String error = null;
            if (world.rank() == 0) {
                try {
                    for (long s : ckpt.committedSteps()) {
                        ckpt.storage().delete(ckpt.dir(s));
                    }
                } catch (IOException e) {
                    error = "cannot delete the old checkpoints under " + ckpt.root() + ": " + e;
                }
            }
            world.barrier();
            if (error != null) {
                throw new IOException(error);
            }
            log.accept("starting over: existing checkpoints under " + ckpt.root() + " deleted");
            return 0;
        }
        Optional<CheckpointMetadata> found = ckpt.resume(world, trainer.model(), trainer.optimizer(), log);
        if (found.isEmpty()) {
            log.accept("no checkpoint under " + ckpt.root() + ": starting from step 0");
            return 0;
        }
        CheckpointMetadata m = found.get();
        long position = m.dp() == dpSize ? m.dataPositions()[dpRank] : m.consumedSamples() / dpSize;
        long behind = position - trainer.data().consumed();
        if (behind < 0) {
            throw new IllegalStateException("the data source has already handed out " + trainer.data().consumed()
                    + " samples, past the checkpoint's position " + position + ": resume needs a fresh source");
        }
        trainer.data().skip(behind);
        log.accept("resumed from " + ckpt.dir(m.step()) + " (step " + m.step() + ", saved at TP " + m.tp() + " x DP " + m.dp() + " x PP " + m.pp()
                + (m.ep() > 1 ? " with EP " + m.ep() : "") + ", data position " + position + ")");
        String savedThreads = m.extra().get(org.sparkatron.checkpoint.AsyncCheckpointer.CPU_THREADS_KEY);
        int threads = org.sparkatron.device.cpu.Blas.threads();
        if (savedThreads != null && trainer.model().device() instanceof org.sparkatron.device.cpu.CpuDevice
                && !savedThreads.equals(Integer.toString(threads))) {
            log.accept("note: the checkpoint was saved with " + savedThreads + " CPU threads per rank, this run has "
                    + threads + ": training continues correctly, but not bit for bit as the saved run would have"
                    + " (a large GEMM's last bits depend on the thread count; set threads_per_rank to " + savedThreads
                    + " for that)");
        }
        return m.step();
    }

    /** Saves a checkpoint of the current step now and waits for its commit (after committing one in flight). */
    public String save() throws IOException {
        String previous = saver.finish(world);
        if (previous != null) {
            log.accept("checkpoint saved: " + previous);
        }
        saver.start(world, dpSize, trainer.model(), trainer.optimizer(), trainer.data().consumed(), opt.extra());
        return saver.finish(world);
    }

    /**
     * What the training loop calls after every step: commits a finished background save (logging
     * "checkpoint saved: DIR"), then at a checkpoint step (every {@code saveEvery}, and {@code last}) saves;
     * in the background when asynchronous, except the last save, which is waited for.
     */
    public void afterStep(long step, boolean last) throws IOException {
        String done = saver.poll(world);
        if (done != null) {
            log.accept("checkpoint saved: " + done);
        }
        if (last) {
            log.accept("checkpoint saved: " + save());
        } else if (opt.saveEvery() > 0 && step % opt.saveEvery() == 0) {
            String previous = saver.finish(world); // a save still in flight is waited for before the next begins
            if (previous != null) {
                log.accept("checkpoint saved: " + previous);
            }
            saver.start(world, dpSize, trainer.model(), trainer.optimizer(), trainer.data().consumed(), opt.extra());
            if (!saver.isAsync()) {
                log.accept("checkpoint saved: " + saver.finish(world));
            }
        }
    }

    /** Stops the background writer; a save still in flight is abandoned (resume falls back past it). */
    @Override
    public void close() {
        saver.close();
    }

    /**
     * Trains from the current step up to {@code totalSteps}, checkpointing every {@code saveEvery} steps and
     * after the last step (unless that step was just saved), calling {@code onStep} after each step.
     *
     * @return the metrics of the steps run here
     */
    public List<Trainer.StepMetrics> run(long totalSteps, Consumer<Trainer.StepMetrics> onStep) throws IOException {
        List<Trainer.StepMetrics> out = new ArrayList<>();
        while (trainer.optimizer().step() < totalSteps) {
            Trainer.StepMetrics m = trainer.step();
            out.add(m);
            if (onStep != null) {
                onStep.accept(m);
            }
            afterStep(m.step(), m.step() >= totalSteps);
        }
        return out;
    }
}
