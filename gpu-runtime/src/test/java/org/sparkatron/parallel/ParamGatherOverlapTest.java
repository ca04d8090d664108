package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.comm.LocalRanks;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.Trainer;

/**
 * {@code overlap_param_gather} (Megatron's option): the distributed optimizer's parameter all-gather deferred
 * to the next forward, bucket by bucket, each awaited just before the first layer that reads it.
 *
 * <ul>
 *   <li>Bitwise the run that gathers right after the update: every rank's loss and gradient norm of every
 *       step, its whole weight block (the 16-bit weights under bf16), and the gathered fp32 master weights,
 *       with DP 2 and 3 (uneven shards), TP 2 with sequence parallelism, PP 2 interleaved, fp32 and bf16.
 *       Tolerance zero: the same bytes move, later, and the 16-bit rounding is element-wise.</li>
 *   <li>Overlap is real: an instrumented data-parallel communicator holds the last-issued gather of each pass
 *       (the bucket of the last layers, which the forward reads last) until the rank's thread has waited for
 *       an earlier bucket and gone on into the forward (up to 20 s); that can only happen when the gathers
 *       overlap the forward. Without the option no gather is left for the forward.</li>
 *   <li>Refused, with a message naming the missing option, without the distributed optimizer or without
 *       overlap_grad_reduce (Megatron asserts both).</li>
 * </ul>
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class ParamGatherOverlapTest {
    private static final int STEPS = 4;
    private static final int MICRO = 2;

    /** Every rank's losses and norms (as doubles), its final weight block and its gathered master weights. */
    record Result(List<double[]> perStep, float[] weights, float[] master, long bucketsAwaited) {
    }

    @ParameterizedTest(name = "{0} tp={1} pp={2} vpp={3} dp={4} {5}")
    @CsvSource({
        "gpt2, 1, 1, 1, 2, fp32",
        "llama, 1, 1, 1, 3, bf16",
        "gpt2, 2, 1, 1, 2, bf16",
        "llama, 1, 2, 2, 2, fp32",
    })
    void overlappedGatherEqualsTheGatherAfterTheUpdateBitwise(String family, int tp, int pp, int vpp, int dp, String precision)
            throws Exception {
        ModelConfig cfg = ParityRun.config(family, 4);
        Precision p = Precision.parse(precision);
        DataParallel.Config off = new DataParallel.Config(true, 600, true);
        List<Result> after = run(cfg, tp, pp, vpp, dp, p, off);
        List<Result> overlapped = run(cfg, tp, pp, vpp, dp, p, off.withOverlapParamGather(true));
        for (int rank = 0; rank < after.size(); rank++) {
            Result a = after.get(rank);
            Result o = overlapped.get(rank);
            assertEquals(0, a.bucketsAwaited(), "without the option the forward waits for no gather");
            assertTrue(o.bucketsAwaited() > 0, "rank " + rank + ": the forward waited for the deferred gathers");
            for (int s = 0; s < STEPS; s++) {
                assertArrayEquals(a.perStep().get(s), o.perStep().get(s), 0.0, "rank " + rank + " step " + (s + 1) + ": loss, norm");
            }
            assertArrayEquals(a.weights(), o.weights(), "rank " + rank + ": the weight block after the last step");
            assertArrayEquals(a.master(), o.master(), "rank " + rank + ": the fp32 master weights");
        }
    }

    private static List<Result> run(ModelConfig cfg, int tp, int pp, int vpp, int dp, Precision p, DataParallel.Config ddp)
            throws Exception {
        int world = tp * pp * dp;
        return LocalRanks.run(world, (rank, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(world, tp, 1, 1, pp, vpp);
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                RankContext ctx = new RankContext(TestDevices.create(), new TensorParallel(pg.tp(), tp > 1), p,
                        new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), pp, vpp, -1, -1), pg.embedding()),
                        new DataParallel(pg.dp(), ddp));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                int dpRank = pg.coords()[3];
                Trainer tr = new Trainer(m, ParityRun.source(cfg, dpRank, dp, 2), PipelineRun.options(2, MICRO));
                List<double[]> steps = new ArrayList<>();
                for (int s = 0; s < STEPS; s++) {
                    Trainer.StepMetrics sm = tr.step();
                    steps.add(new double[] {sm.loss(), sm.gradNorm()});
                }
                long awaited = m.dataParallel().paramGatherStats()[0];
                m.finishParamGather(); // the last step's gather, deferred (and none left behind by the passes)
                float[] weights = TestDevices.read(m.device(), m.params().weights());
                tr.distributedOptimizer().gatherMasterWeights();
                float[] master = TestDevices.read(m.device(), m.params().weights());
                tr.close();
                m.close();
                return new Result(steps, weights, master, awaited);
            }
        });
    }

    @Test
    void theGathersOverlapTheForward() throws Exception {
        ModelConfig cfg = ParityRun.config("gpt2", 4);
        DataParallel.Config ddp = new DataParallel.Config(true, 2000, true, true);
        List<String> failures = LocalRanks.run(2, (rank, comm) -> {
            ParallelLayout layout = ParallelLayout.forWorld(2, 1, 1, 1, 1, 1);
            try (ProcessGroups pg = ProcessGroups.create(layout, comm)) {
                GradReduceOverlapTest.Recording dp = new GradReduceOverlapTest.Recording(pg.dp(), Collections.synchronizedList(
                        new ArrayList<>()));
                RankContext ctx = new RankContext(TestDevices.create(), TensorParallel.none(), Precision.FP32,
                        new PipelineParallel(pg.pp(), PipelineLayout.of(cfg.layers(), 1, 1, -1, -1), pg.embedding()),
                        new DataParallel(dp, ddp));
                Transformer m = new Transformer(cfg, ctx);
                m.initialize(ParityRun.SEED);
                DistributedDataParallel d = m.dataParallel();
                int buckets = d.plan().buckets().size();
                assertTrue(buckets >= 3, "the bucket size cuts the parameters into several buckets, got " + buckets);
                Thread rankThread = Thread.currentThread();
                AtomicInteger gathers = new AtomicInteger();
                AtomicLong awaitedAtPassStart = new AtomicLong();
                List<String> problems = Collections.synchronizedList(new ArrayList<>());
                dp.beforeGather = t -> {
                    if (Thread.currentThread() == rankThread || t.numel() <= 1) {
                        problems.add("a parameter gather ran on the rank's thread");
                        return;
                    }
                    if (gathers.incrementAndGet() % buckets != 0) {
                        return; // not the last-issued bucket of the pass
                    }
                    long deadline = System.nanoTime() + 20_000_000_000L;
                    while (d.paramGatherStats()[0] == awaitedAtPassStart.get() && System.nanoTime() < deadline) {
                        Thread.onSpinWait();
                    }
                    if (d.paramGatherStats()[0] == awaitedAtPassStart.get()) {
                        problems.add("pass " + gathers.get() / buckets + ": the forward did not go on while the last bucket's"
                                + " gather was held");
                    }
                };
                Trainer tr = new Trainer(m, ParityRun.source(cfg, pg.coords()[3], 2, 2), PipelineRun.options(2, MICRO));
                for (int s = 0; s < 3; s++) {
                    awaitedAtPassStart.set(d.paramGatherStats()[0]);
                    tr.step();
                }
                assertEquals(2 * buckets, gathers.get(), "steps 2 and 3 gathered every bucket once, during their forward");
                assertEquals(2L * buckets, d.paramGatherStats()[0], "the forward waited for every bucket");
                tr.close();
                m.close();
                return String.join("; ", problems);
            }
        });
        for (String f : failures) {
            assertEquals("", f);
        }
    }

    @Test
    void refusedWhereItCannotApply() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new DataParallel.Config(false, 0, true, true));
        assertTrue(e.getMessage().startsWith("overlap_param_gather needs use_distributed_optimizer"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new DataParallel.Config(true, 0, false, true));
        assertTrue(e.getMessage().startsWith("overlap_param_gather needs overlap_grad_reduce"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> DataParallel.Config.defaults().withOverlapParamGather(true));
        assertTrue(e.getMessage().contains("use_distributed_optimizer"), e.getMessage());
    }
}
