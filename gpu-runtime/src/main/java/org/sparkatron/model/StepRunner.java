package org.sparkatron.model;

import java.nio.IntBuffer;
import java.util.List;
import org.sparkatron.comm.Communicator;
import org.sparkatron.device.Device;
import org.sparkatron.parallel.ContextParallel;
import org.sparkatron.parallel.PipelineParallel;
import org.sparkatron.parallel.pipeline.PipelineOp;
import org.sparkatron.parallel.pipeline.Schedule;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Runs one rank's part of a pipeline {@link Schedule} over its {@link ModelChunk}s: takes a micro-batch slot
 * for each micro-batch a chunk starts, uploads token ids where the chunk embeds them or computes the loss,
 * receives activations and gradients with blocking receives and sends them without waiting (a slot goes
 * back to its chunk's pool only once its sends are done), and gives every micro-batch its dropout key.
 *
 * <p>Messages between stages are tagged by (micro-batch, receiving virtual stage, direction), so each
 * matches exactly one receive whatever else is in flight (the communicator matches per sender and tag in
 * FIFO order). A dead peer fails the receive after the communicator's timeout: no hang.
 *
 * <p>One rank's thread; stateless between calls apart from the token staging buffer.
 */
public final class StepRunner {
    private final Device device;
    private final PipelineParallel pp;
    private final List<ModelChunk> chunks;
    private final ContextParallel cp;
    private Tensor staging; // [2N] I32 host: one micro-batch's inputs then targets
    private int[] positions = new int[0]; // this CP rank's positions of a sequence (context parallelism)
    private OpListener listener; // null: no timing
    private GradReadyHook gradHook; // null: nobody waits for final gradients

    /** Told each operation's start and end ({@link System#nanoTime()}), after it ran: benchmarks and profiles. */
    public interface OpListener {
        void ran(PipelineOp op, long startNanos, long endNanos);
    }

    void setListener(OpListener listener) {
        this.listener = listener;
    }

    /** Told, during each chunk's last backward of a training step, which parameters' gradients are final. */
    void setGradReadyHook(GradReadyHook hook) {
        this.gradHook = hook;
    }

    StepRunner(Device device, PipelineParallel pp, ContextParallel cp, List<ModelChunk> chunks) {
        this.device = device;
        this.pp = pp;
        this.cp = cp;
        this.chunks = chunks;
    }

    /** What a run computes: training (forward and backward, dropout) or forward only. */
    record Pass(boolean training, float gradScale, Tensor lossAcc, int slot, double lossWeight, long dropoutStepBase,
                TransformerBlock.DropKey dropTemplate) {
    }

    /**
     * Runs {@code schedule}'s operations for this stage. {@code samples.get(i)} holds micro-batch i's
     * {@code b} samples of {@code t + 1} tokens (null where this rank embeds nothing and computes no loss).
     */
    void run(Schedule schedule, List<int[]> samples, BlockActivations.Shape shape, Recompute mode, Pass pass) {
        int m = schedule.microBatches();
        int v = chunks.size();
        MicroBatch[][] live = new MicroBatch[v][m];
        Communicator g = pp.group();
        int p = pp.size();
        int stage = pp.stage();
        int prev = (stage - 1 + p) % p;
        int next = (stage + 1) % p;
        List<PipelineOp> ops = schedule.ops(stage);
        int[] lastBackward = new int[v]; // per chunk: the index of its last backward, after which its gradients are final
        java.util.Arrays.fill(lastBackward, -1);
        for (int i = 0; i < ops.size(); i++) {
            if (ops.get(i).kind() == PipelineOp.Kind.BACKWARD) {
                lastBackward[ops.get(i).chunk()] = i;
            }
        }
        try {
            for (int i = 0; i < ops.size(); i++) {
                PipelineOp op = ops.get(i);
                int c = op.chunk();
                int mb = op.microBatch();
                ModelChunk chunk = chunks.get(c);
                int k = c * p + stage; // this chunk's virtual stage
                MicroBatch x = live[c][mb];
                long t0 = listener == null ? 0 : System.nanoTime();
                switch (op.kind()) {
                    case RECV_FORWARD -> {
                        x = take(live, chunk, c, mb, samples, shape, mode, pass);
                        g.recv(x.input, prev, tag(mb, k, 0, p * v));
                    }
                    case FORWARD -> {
                        if (x == null) {
                            x = take(live, chunk, c, mb, samples, shape, mode, pass);
                        }
                        chunk.forward(x, pass.training(), pass.gradScale(), pass.lossAcc(), pass.slot(), pass.lossWeight());
                        if (!pass.training() && chunk.isLast()) { // forward only: nothing to send, nothing to keep
                            done(live, chunk, c, mb);
                        }
                    }
                    case SEND_FORWARD -> {
                        x.sending(g.isend(x.output(), next, tag(mb, k + 1, 0, p * v)));
                        if (!pass.training()) {
                            done(live, chunk, c, mb);
                        }
                    }
                    case RECV_BACKWARD -> g.recv(x.grad, next, tag(mb, k, 1, p * v));
                    case BACKWARD -> {
                        chunk.backward(x, pass.training() && i == lastBackward[c] ? gradHook : null);
                        if (chunk.isFirst()) {
                            done(live, chunk, c, mb);
                        }
                    }
                    case SEND_BACKWARD -> {
                        x.sending(g.isend(x.grad, prev, tag(mb, k - 1, 1, p * v)));
                        done(live, chunk, c, mb);
                    }
                    default -> throw new IllegalStateException("unknown operation " + op);
                }
                if (listener != null) { // the CPU device has finished the work by now; a GPU's would need events
                    listener.ran(op, t0, System.nanoTime());
                }
            }
        } finally {
            for (int c = 0; c < v; c++) { // after a failure: slots back, so the next attempt starts clean
                for (int mb = 0; mb < m; mb++) {
                    if (live[c][mb] != null) {
                        chunks.get(c).release(live[c][mb]);
                    }
                }
            }
        }
    }

    /** Message tag: micro-batch, the virtual stage that receives it, and the direction (0 forward, 1 backward). */
    static int tag(int mb, int receiver, int direction, int virtualStages) {
        return 2 * (mb * virtualStages + receiver) + direction;
    }

    private MicroBatch take(MicroBatch[][] live, ModelChunk chunk, int c, int mb, List<int[]> samples,
                            BlockActivations.Shape s, Recompute mode, Pass pass) {
        MicroBatch x = chunk.acquire(s, mode);
        live[c][mb] = x;
        x.drop = pass.training() && pass.dropTemplate().rng() != null
                ? new TransformerBlock.DropKey(pass.dropTemplate().rng(), pass.dropoutStepBase() + mb + 1,
                        pass.dropTemplate().rowOffset())
                : TransformerBlock.DropKey.NONE;
        if (x.tokens != null) {
            upload(x.tokens, samples.get(mb), s);
        }
        return x;
    }

    private void done(MicroBatch[][] live, ModelChunk chunk, int c, int mb) {
        chunk.release(live[c][mb]);
        live[c][mb] = null;
    }

    /**
     * Inputs (tokens [0, T)) then targets (tokens [1, T + 1)) of b samples of T + 1 tokens, to the device; under
     * context parallelism only this rank's rows of each sequence (its two chunks, as Megatron's
     * {@code get_batch_on_this_cp_rank} splits tokens and labels alike).
     */
    void upload(Tensor tokens, int[] samples, BlockActivations.Shape s) {
        int b = s.b();
        int t = s.t();
        int n = s.n();
        int seq = s.seq();
        if (samples == null) {
            throw new IllegalStateException("stage " + pp.stage() + " embeds tokens or computes the loss but was given no samples");
        }
        if (staging == null || staging.numel() != 2L * n) {
            staging = device.allocateHostStaging(DType.I32, 2L * n);
        }
        IntBuffer staged = staging.ints();
        if (cp.size() == 1) {
            for (int i = 0; i < b; i++) {
                staged.put(i * t, samples, i * (t + 1), t);
                staged.put(n + i * t, samples, i * (t + 1) + 1, t);
            }
        } else {
            if (positions.length != t) {
                positions = cp.positions(seq);
            }
            for (int i = 0; i < b; i++) {
                for (int l = 0; l < t; l++) {
                    int at = i * (seq + 1) + positions[l];
                    staged.put(i * t + l, samples[at]);
                    staged.put(n + i * t + l, samples[at + 1]);
                }
            }
        }
        device.upload(tokens, staging.hostBuffer());
    }
}
