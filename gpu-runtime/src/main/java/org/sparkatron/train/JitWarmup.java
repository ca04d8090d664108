package org.sparkatron.train;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;

/**
 * Has the JIT compile the CPU training path before a job's first step: a few training steps of the job's model
 * (fp32, one sample per step, random tokens, a device of its own) on a daemon thread, started when a local job
 * begins preparing its data. Why: the CPU kernels are Vector API loops, which run 100x slower interpreted than
 * compiled; the first step of the demo's model took 2.3-2.7 s in a fresh JVM against 0.2-0.5 s once compiled,
 * and the data preparation before the ranks start leaves the time to compile them (docs/benchmarks.md).
 *
 * <p>Results do not depend on it: the kernels compute the same bits in every JIT tier (the exp is IEEE
 * arithmetic only, sums in a fixed order; {@code SimdExpTest}), and the warm-up shares no state with the ranks
 * (its own model, device and optimizer; the BLAS thread count is left as it is).
 *
 * <p>Once per JVM (process state, not rank state: the JIT's code is the process's). Models above
 * {@link #MAX_PARAMETERS} are not warmed: their first step is long enough that the JIT's time is a small part of
 * it, and a copy of their weights and optimizer would cost memory. Threading: {@link #start}, {@link #stop} and
 * {@link #awaitStopped} may be called from any thread; the warm-up never throws (a failure ends it quietly).
 */
public final class JitWarmup {
    /** The largest model warmed, in parameters (the copy costs 16 bytes a parameter with AdamW's state). */
    public static final long MAX_PARAMETERS = 20_000_000L;
    /** Steps at most: after these the kernels were compiled (measured: the 6th one-sample step of the demo's model took 0.1 s). */
    static final int STEPS = 8;
    private static final AtomicBoolean STARTED = new AtomicBoolean();
    private static volatile boolean stopped;
    private static volatile Thread thread;
    private static volatile int stepsTaken;

    private JitWarmup() {
    }

    /**
     * Starts the warm-up for {@code cfg} with samples of {@code seqLen} tokens on a daemon thread, unless one ran in
     * this JVM already or the model is larger than {@link #MAX_PARAMETERS}.
     *
     * @return whether a warm-up was started now
     */
    public static boolean start(ModelConfig cfg, int seqLen) {
        if (ModelFlops.parameters(cfg) > MAX_PARAMETERS || !STARTED.compareAndSet(false, true)) {
            return false;
        }
        Thread t = new Thread(() -> run(cfg, seqLen), "sparkatron-jit-warmup");
        t.setDaemon(true);
        t.setPriority(Thread.MIN_PRIORITY);
        thread = t;
        t.start();
        return true;
    }

    /** Asks the warm-up to end after its current step (the ranks are starting: they need the cores). */
    public static void stop() {
        stopped = true;
    }

    /** {@link #stop}, then waits up to {@code millis} for the warm-up thread to end (before measuring the machine's peak). */
    public static void awaitStopped(long millis) {
        stop();
        Thread t = thread;
        if (t != null) {
            try {
                t.join(millis);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /** Steps the warm-up has taken (tests). */
    static int stepsTaken() {
        return stepsTaken;
    }

    private static void run(ModelConfig cfg, int seqLen) {
        try {
            CpuDevice device = new CpuDevice();
            Transformer model = new Transformer(cfg, device);
            try {
                model.initialize(1);
                SplittableRandom rng = new SplittableRandom(1);
                List<int[]> rows = new ArrayList<>();
                for (int i = 0; i < STEPS; i++) {
                    rows.add(rng.ints(seqLen + 1, 0, cfg.vocabSize()).toArray());
                }
                Trainer trainer = new Trainer(model, PackedSamples.perSequence(rows, 1),
                        new Trainer.Options(1, 1, LrSchedule.constant(1e-4), 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f));
                try {
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
                    for (int s = 0; s < STEPS && !stopped && System.nanoTime() < deadline; s++) {
                        trainer.step();
                        stepsTaken = s + 1;
                    }
                } finally {
                    trainer.close();
                }
            } finally {
                model.close();
                device.close();
            }
        } catch (Throwable e) {
            // a warm-up only: the job's own first step compiles what this did not
        } finally {
            thread = null;
        }
    }
}
