package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Request;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.pipeline.PipelineOp;
import org.sparkatron.precision.Precision;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.Trainer;

/**
 * Overlap is real: an instrumented data-parallel communicator records when each gradient bucket's reduction
 * begins (and on which thread), the model's op listener when each micro-batch's backward ends. With overlap on
 * (after the first step, which learns which parameters complete together), reductions begin on the
 * communication lane's thread before the step's last backward has ended: at the end of that backward the
 * listener waits (up to 20 s) for the first reduction to begin, which it only can if it was issued during the
 * backward. Every bucket is reduced exactly once per step. With overlap off every reduction begins after the
 * last backward (the buffer is then one bucket, as in Megatron).
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class GradReduceOverlapTest {
    private static final int MICRO = 2;
    private static final int STEPS = 3;

    @ParameterizedTest(name = "distributed optimizer {0}, overlap {1}")
    @CsvSource({"false, true", "true, true", "false, false", "true, false"})
    void reductionsBeginBeforeTheBackwardEndsOnlyWithOverlap(boolean distopt, boolean overlap) throws Exception {
        ModelConfig cfg = ParityRun.config("gpt2", 4);
        DataParallel.Config ddpConfig = new DataParallel.Config(distopt, 2000, overlap);
        List<String> failures = LocalRanks.run(2, (rank, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(2, 1, 1, 1, 1, 1);
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                List<String> events = Collections.synchronizedList(new ArrayList<>());
                Recording dp = new Recording(pg.dp(), events);
                RankContext ctx = new RankContext(TestDevices.create(), TensorParallel.none(), Precision.FP32,
                        new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), 1, 1, -1, -1), pg.embedding()),
                        new DataParallel(dp, ddpConfig));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                Thread rankThread = Thread.currentThread();
                AtomicInteger step = new AtomicInteger();
                m.setOpListener((PipelineOp op, long start, long end) -> {
                    if (op.kind() != PipelineOp.Kind.BACKWARD || op.microBatch() != MICRO - 1) {
                        return;
                    }
                    if (overlap && step.get() > 0) { // the first step learns the ready counts and reduces at its end
                        long deadline = System.nanoTime() + 20_000_000_000L;
                        while (dp.begun.get() == 0 && System.nanoTime() < deadline) {
                            Thread.onSpinWait();
                        }
                    }
                    events.add("backward-end");
                });
                Trainer tr = new Trainer(m, ParityRun.source(cfg, pg.coords()[3], 2, 2), PipelineRun.options(2, MICRO));
                int buckets = m.dataParallel().plan().buckets().size();
                if (overlap) {
                    assertTrue(buckets >= 3, "the bucket size cuts the gradients into several buckets, got " + buckets);
                } else {
                    assertEquals(1, buckets, "without overlap the buffer is one bucket (Megatron's bucket_size None)");
                }
                List<String> problems = new ArrayList<>();
                for (int s = 0; s < STEPS; s++) {
                    step.set(s);
                    dp.begun.set(0);
                    events.clear();
                    tr.step();
                    List<String> ev = new ArrayList<>(events);
                    int end = ev.indexOf("backward-end");
                    List<Integer> reductions = new ArrayList<>();
                    for (int i = 0; i < ev.size(); i++) {
                        if (ev.get(i).startsWith("reduce ")) {
                            reductions.add(i);
                        }
                    }
                    assertEquals(buckets, reductions.size(), "step " + (s + 1) + ": every bucket reduced once: " + ev);
                    boolean early = reductions.get(0) < end;
                    if (overlap && s > 0) {
                        if (!early) {
                            problems.add("step " + (s + 1) + ": no reduction began before the backward ended: " + ev);
                        }
                        assertNotEquals(rankThread.getName(), ev.get(reductions.get(0)).substring(7),
                                "reductions run on the communication lane");
                    } else if (early) {
                        problems.add("step " + (s + 1) + ": a reduction began before the backward ended: " + ev);
                    }
                }
                m.close();
                return String.join("; ", problems);
            }
        });
        for (String f : failures) {
            assertEquals("", f);
        }
    }

    /** Forwards to a communicator; records each bucket reduction's beginning (more than one element) and its thread. */
    static final class Recording implements Communicator {
        private final Communicator inner;
        private final List<String> events;
        final AtomicInteger begun = new AtomicInteger();
        volatile java.util.function.Consumer<Tensor> beforeGather = t -> { }; // runs on the caller's thread

        Recording(Communicator inner, List<String> events) {
            this.inner = inner;
            this.events = events;
        }

        private void begin(Tensor t) {
            if (t.numel() > 1) { // not the loss scalar
                events.add("reduce " + Thread.currentThread().getName());
                begun.incrementAndGet();
            }
        }

        @Override
        public int rank() {
            return inner.rank();
        }

        @Override
        public int size() {
            return inner.size();
        }

        @Override
        public void allReduce(Tensor t, ReduceOp op) {
            begin(t);
            inner.allReduce(t, op);
        }

        @Override
        public void reduceScatter(Tensor in, Tensor out, ReduceOp op) {
            begin(in);
            inner.reduceScatter(in, out, op);
        }

        @Override
        public void allGather(Tensor in, Tensor out) {
            beforeGather.accept(out);
            inner.allGather(in, out);
        }

        @Override
        public void allGatherV(Tensor in, Tensor out, int[] counts) {
            inner.allGatherV(in, out, counts);
        }

        @Override
        public void broadcast(Tensor t, int root) {
            inner.broadcast(t, root);
        }

        @Override
        public void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts) {
            inner.allToAll(in, sendCounts, out, recvCounts);
        }

        @Override
        public Request isend(Tensor t, int peer, int tag) {
            return inner.isend(t, peer, tag);
        }

        @Override
        public Request irecv(Tensor t, int peer, int tag) {
            return inner.irecv(t, peer, tag);
        }

        @Override
        public void barrier() {
            inner.barrier();
        }

        @Override
        public void abort(String reason) {
            inner.abort(reason);
        }

        @Override
        public Communicator subGroup(int groupId, int[] ranks) {
            return inner.subGroup(groupId, ranks);
        }

        @Override
        public void close() {
        }
    }
}
