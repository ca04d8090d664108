package org.sparkatron.parallel;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.function.IntConsumer;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.model.ForwardPreHook;
import org.sparkatron.model.GradReadyHook;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.GradientSync;

/**
 * Data parallelism inside the engine, as Megatron Core's {@code DistributedDataParallel}: the rank's
 * gradient block is cut into buckets ({@link GradBuffer}); during the last micro-batch's backward (under
 * pipelining: each model chunk's last backward of the step) the model reports each parameter whose gradient
 * is final ({@link #ready}), and a bucket's reduction starts on the {@link CommLane} as soon as all its
 * parameters are reported, overlapping the rest of the backward. {@link #finishGradSync} waits for every
 * bucket before the optimizer. Plain data parallelism all-reduces (averages) each bucket; with the
 * distributed optimizer each bucket is reduce-scattered in place, so this rank's shard holds the average and
 * the rest of the bucket is scratch, and after the optimizer updated the shard {@link #gatherParams}
 * all-gathers the bucket's parameters.
 *
 * <p>With {@code overlap_param_gather} ({@link DataParallel.Config#overlapParamGather}) the all-gather after
 * the optimizer step is deferred to the next forward pass, as in Megatron: {@link #paramsUpdated} only marks
 * the weights, the pass's start ({@link #startParamGather}) issues every bucket's all-gather on the lane in
 * the order the forward reads them (each model chunk's buckets in reverse), and the model's
 * {@link ForwardPreHook} waits for a bucket just before the first layer that reads it, so the gathers of later
 * layers overlap the forward of earlier ones. Between an optimizer step and the next pass the weight block is
 * current only in this rank's shards: code that reads or replaces the weights outside a pass calls
 * {@link #finishParamGather} first (the checkpoints, {@link TpCheckpoint#gatherFull} and the distributed
 * optimizer's {@code gatherMasterWeights} do). The values are those of the gather after the update, bit for
 * bit: the same bytes move, later.
 *
 * <p>Which parameters complete together is learnt in the first step, as Megatron does (its "golden" ready
 * counts: a tied embedding used twice on one rank is reported twice): the first step reduces every bucket at
 * its end, later steps as soon as each is complete. A later step whose reports differ from the first's is a
 * bug and {@link #finishGradSync} says which parameters were missing.
 *
 * <p>Gradients accumulate in fp32 over the micro-batches in the model's gradient block; nothing is
 * communicated before the last micro-batch. Averaging uses the collective's AVG (Megatron's
 * {@code average_in_collective}): the mean over the group of the per-rank gradients, each already the mean
 * over the rank's micro-batches.
 *
 * <p>Threading: one rank's thread calls everything; the reductions run on the lane (a thread of its own on
 * the CPU, the communication stream on a GPU), which is the only user of the data-parallel communicators
 * between {@link #beginStep} and {@link #finishGradSync}. Every call that communicates is a collective of
 * the data-parallel group. A failed peer surfaces as the communicator's exception from
 * {@link #finishGradSync} (or the call that waited).
 */
public final class DistributedDataParallel implements GradientSync, GradReadyHook, ForwardPreHook {
    private final ParameterSet params;
    private final GradBuffer plan;
    private final Communicator[] groups;
    private final int[] groupRanks;
    private final CommLane lane;
    private final boolean overlap;
    private final boolean overlapParamGather;
    private final CommLane.Pending[] gathering; // per bucket: its parameter all-gather in flight (overlap_param_gather)
    private final int[] gatherOrder;            // buckets in the order the forward reads them
    private IntConsumer afterGather = b -> { };  // the model's treatment of a gathered bucket (rounding to 16 bits)
    private boolean gatherDeferred;             // the optimizer updated the shards; the gathers wait for the next pass
    private int gathersInFlight;
    private volatile long bucketsAwaited;       // gathers waited for, since construction (read by tests on other threads)
    private long gatherNanos;                   // time the deferred all-gathers ran on the lane
    private long gatherWaitNanos;               // time the forward blocked waiting for them
    private final int[] bucketOf;          // parameter -> bucket
    private final int[] counts;            // this step's ready reports per parameter
    private int[] golden;                  // the first step's, or null before it ended
    private final int[] missing;           // per bucket: parameters whose count differs from golden
    private final CommLane.Pending[] pending;
    private final List<long[]> owned;      // {start, length} per bucket: the state this rank keeps
    private boolean inStep;
    private long reductionsStarted;
    private long reduceNanos; // time the gradient reductions ran (on the lane), read after their await
    private long waitNanos;   // time finishGradSync blocked the rank's thread

    /**
     * @param groups the reduction groups the plan's buckets name (index 0: the dense data-parallel group)
     * @param lane   where reductions run (owned: closed by {@link #close})
     * @param overlapParamGather defer the parameter all-gather to the next forward (needs a sharded plan)
     */
    public DistributedDataParallel(ParameterSet params, GradBuffer plan, Communicator[] groups, CommLane lane,
                                   boolean overlap, boolean overlapParamGather) {
        if (overlapParamGather && !plan.sharded()) {
            throw new IllegalArgumentException("overlap_param_gather needs the distributed optimizer (a sharded gradient buffer)");
        }
        if (params.numel() != plan.numel()) {
            throw new IllegalArgumentException("parameter block of " + params.numel() + " elements for a plan of " + plan.numel());
        }
        this.params = params;
        this.plan = plan;
        this.groups = groups.clone();
        this.groupRanks = new int[groups.length];
        for (int g = 0; g < groups.length; g++) {
            if (groups[g].size() != plan.groupSize(g)) {
                throw new IllegalArgumentException("reduction group " + g + " has " + groups[g].size() + " ranks, the plan "
                        + plan.groupSize(g));
            }
            groupRanks[g] = groups[g].rank();
        }
        this.lane = lane;
        this.overlap = overlap;
        int n = params.params().size();
        this.bucketOf = new int[n];
        Arrays.fill(bucketOf, -1);
        for (GradBuffer.Bucket b : plan.buckets()) {
            for (int p : b.params()) {
                bucketOf[p] = b.index();
            }
        }
        this.counts = new int[n];
        this.missing = new int[plan.buckets().size()];
        this.pending = new CommLane.Pending[plan.buckets().size()];
        this.owned = plan.ownedRanges(groupRanks);
        this.overlapParamGather = overlapParamGather;
        this.gathering = new CommLane.Pending[plan.buckets().size()];
        this.gatherOrder = forwardOrder(plan);
    }

    /** Each model chunk's buckets in reverse (the forward reads a chunk's parameters in declaration order), chunks in order. */
    private static int[] forwardOrder(GradBuffer plan) {
        List<GradBuffer.Bucket> bs = plan.buckets();
        int[] order = new int[bs.size()];
        int at = 0;
        int chunks = bs.isEmpty() ? 0 : bs.get(bs.size() - 1).chunk() + 1;
        for (int c = 0; c < chunks; c++) {
            for (int b = bs.size() - 1; b >= 0; b--) {
                if (bs.get(b).chunk() == c) {
                    order[at++] = b;
                }
            }
        }
        return order;
    }

    /** The layout and buckets. */
    public GradBuffer plan() {
        return plan;
    }

    /** Whether the optimizer state is sharded over the group (the distributed optimizer). */
    public boolean sharded() {
        return plan.sharded();
    }

    /** The dense data-parallel group (losses are averaged over it). */
    public Communicator group() {
        return groups[0];
    }

    /** This rank's index in each reduction group. */
    public int[] groupRanks() {
        return groupRanks.clone();
    }

    /**
     * The element ranges of the flat blocks whose optimizer state this rank keeps, {@code {start, length}} in
     * bucket order: its shard of every bucket under the distributed optimizer, else every bucket whole.
     */
    public List<long[]> ownedRanges() {
        return Collections.unmodifiableList(owned);
    }

    /** Views of the gradient block over {@link #ownedRanges()}: what the optimizer reads after the reduction. */
    public List<Tensor> ownedGradients() {
        List<Tensor> out = new ArrayList<>();
        for (long[] r : owned) {
            if (r[1] > 0) {
                out.add(params.grads().slice(r[0], r[1]));
            }
        }
        return out;
    }

    /** Bucket reductions started so far (for tests and benchmarks). */
    public long reductionsStarted() {
        return reductionsStarted;
    }

    /**
     * Nanoseconds the gradient reductions of finished steps ran, and the part of them the rank's thread spent
     * waiting in {@link #finishGradSync} (the rest overlapped the backward): {@code {reduce, wait}}, for
     * benchmarks. On the CPU lane; with an inline lane both are the reductions' time.
     */
    public long[] reductionNanos() {
        return new long[] {reduceNanos, waitNanos};
    }

    /**
     * Starts a step's backward: reports count from zero. Throws if the previous step's reductions were
     * started and never finished ({@link #finishGradSync} not called): the gradients would mix two steps.
     */
    public void beginStep() {
        if (inStep) {
            throw new IllegalStateException("the previous step's gradient reductions were never finished: call "
                    + "finishGradSync (Trainer does) after a data-parallel model's forwardBackward");
        }
        inStep = true;
        Arrays.fill(counts, 0);
        if (golden != null) {
            System.arraycopy(missingPerBucket(), 0, missing, 0, missing.length);
        }
    }

    private int[] missingPerBucket() {
        int[] m = new int[plan.buckets().size()];
        for (int p = 0; p < golden.length; p++) {
            if (golden[p] > 0) {
                m[bucketOf[p]]++;
            }
        }
        return m;
    }

    /**
     * Parameter {@code param} (layout index) received its final gradient contribution of this step. When a
     * bucket's parameters are all final (after the first step), its reduction starts. Called on the rank's
     * thread after the kernels that wrote the gradient were issued.
     */
    @Override
    public void ready(int param) {
        if (!inStep || !overlap) {
            return;
        }
        counts[param]++;
        if (golden == null) {
            return; // the first step learns the counts
        }
        if (counts[param] == golden[param]) {
            int b = bucketOf[param];
            if (--missing[b] == 0 && pending[b] == null) {
                start(b);
            }
        }
    }

    private void start(int b) {
        GradBuffer.Bucket bucket = plan.buckets().get(b);
        Communicator g = groups[bucket.group()];
        reductionsStarted++;
        if (g.size() == 1) {
            pending[b] = CommLane.Pending.DONE;
            return;
        }
        Tensor data = params.grads().slice(bucket.start(), bucket.numel());
        Runnable op;
        if (plan.sharded()) {
            long at = bucket.shardStart(g.rank(), g.size()) - bucket.start();
            Tensor shard = data.slice(at, bucket.shardNumel(g.size()));
            op = () -> g.reduceScatter(data, shard, ReduceOp.AVG);
        } else {
            op = () -> g.allReduce(data, ReduceOp.AVG);
        }
        pending[b] = lane.submit(() -> {
            long t0 = System.nanoTime();
            op.run();
            reduceNanos += System.nanoTime() - t0; // one lane thread; read by the rank after the await
        });
    }

    /**
     * Completes the step's gradient reduction: starts the buckets not started yet (all of them without
     * overlap, and in the first step), then waits for every bucket. Afterwards the owned ranges hold the
     * gradients averaged over the group.
     *
     * @throws IllegalStateException when (after the first step) a bucket's parameters were not all reported
     */
    public void finishGradSync() {
        if (!inStep) {
            throw new IllegalStateException("finishGradSync without a step's forwardBackward");
        }
        long t0 = System.nanoTime(); // what the rank waits from here on is communication not hidden by the backward
        if (overlap && golden != null) {
            for (int b = 0; b < pending.length; b++) {
                if (pending[b] == null && missing[b] > 0) {
                    throw new IllegalStateException("gradient bucket " + b + " was never started: parameters "
                            + unreported(b) + " did not report their gradients ready in this step's backward");
                }
            }
        }
        for (int b = 0; b < pending.length; b++) {
            if (pending[b] == null) {
                start(b);
            }
        }
        try {
            for (int b = 0; b < pending.length; b++) {
                pending[b].await();
            }
        } finally {
            waitNanos += System.nanoTime() - t0;
            Arrays.fill(pending, null);
            if (golden == null && overlap) {
                golden = counts.clone();
            }
            inStep = false;
        }
    }

    private List<String> unreported(int b) {
        List<String> out = new ArrayList<>();
        for (int p : plan.buckets().get(b).params()) {
            if (counts[p] != golden[p]) {
                out.add(params.params().get(p).name() + " (" + counts[p] + " of " + golden[p] + ")");
            }
        }
        return out;
    }

    /** {@link GradientSync}: {@link #finishGradSync} (the block is this model's). */
    @Override
    public void syncGradients(Tensor grads) {
        if (grads != params.grads()) {
            throw new IllegalArgumentException("this data-parallel model reduces its own gradient block");
        }
        finishGradSync();
    }

    /**
     * The element-wise maximum of the FP8 amaxes over the dense data-parallel group (delayed scaling's amax
     * reduction over the replicas, as Megatron's amax reduction group); nothing for a group of one.
     */
    @Override
    public void maxOverReplicas(Tensor amaxes) {
        if (group().size() > 1) {
            group().allReduce(amaxes, org.sparkatron.comm.ReduceOp.MAX);
        }
    }

    /** The mean of F64 device scalars (the loss) over the dense data-parallel group. */
    @Override
    public void averageScalars(Tensor scalars) {
        Communicator g = groups[0];
        if (g.size() > 1) {
            lane.submit(() -> g.allReduce(scalars, ReduceOp.AVG)).await();
        }
    }

    /** The sum of F64 device scalars (token counts) over the dense data-parallel group. */
    @Override
    public void sumScalars(Tensor scalars) {
        Communicator g = groups[0];
        if (g.size() > 1) {
            lane.submit(() -> g.allReduce(scalars, ReduceOp.SUM)).await();
        }
    }

    /**
     * Sums an F64 device scalar over every reduction group (the squared norm of sharded gradients: each
     * rank summed its own shard).
     */
    public void sumOverGroups(Tensor scalar) {
        for (Communicator g : groups) {
            if (g.size() > 1) {
                lane.submit(() -> g.allReduce(scalar, ReduceOp.SUM)).await();
            }
        }
    }

    /**
     * After the distributed optimizer updated this rank's shard of {@code weights} (a block of the plan's
     * layout): all-gathers every bucket's parameters over its group, in place. Nothing to do without
     * sharding. The buckets' all-gathers are issued back to back and awaited together.
     */
    public void gatherParams(Tensor weights) {
        if (!plan.sharded()) {
            return;
        }
        List<CommLane.Pending> waits = new ArrayList<>();
        for (GradBuffer.Bucket b : plan.buckets()) {
            Communicator g = groups[b.group()];
            if (g.size() == 1) {
                continue;
            }
            Tensor all = weights.slice(b.start(), b.numel());
            Tensor mine = weights.slice(b.shardStart(g.rank(), g.size()), b.shardNumel(g.size()));
            waits.add(lane.submit(() -> g.allGather(mine, all)));
        }
        for (CommLane.Pending w : waits) {
            w.await();
        }
    }

    /** Whether the parameter all-gather overlaps the next forward ({@code overlap_param_gather}). */
    public boolean overlapsParamGather() {
        return overlapParamGather;
    }

    /**
     * What the model does with each bucket of its weight block once gathered during a pass (rounds it to its
     * 16 bits under mixed precision); called on the rank's thread. Set by the model.
     */
    public void setAfterParamGather(IntConsumer afterBucket) {
        this.afterGather = afterBucket;
    }

    /**
     * The optimizer updated this rank's shard of the model's weight block: all-gathers every bucket now
     * ({@link #gatherParams}), or with {@code overlap_param_gather} marks them to be gathered during the next
     * pass. Collective over the data-parallel group (the deferred gather is, when it runs).
     */
    public void paramsUpdated() {
        if (!plan.sharded()) {
            return;
        }
        if (overlapParamGather) {
            gatherDeferred = true;
        } else {
            gatherParams(params.weights());
        }
    }

    /**
     * At the start of a pass: issues the deferred all-gathers (every bucket, in the order the forward reads
     * them) on the lane and returns true; false when none was deferred. The pass's {@link #beforeUse} calls
     * then wait for each bucket; {@link #finishParamGather} for any left.
     */
    public boolean startParamGather() {
        if (!gatherDeferred) {
            return false;
        }
        gatherDeferred = false;
        Tensor weights = params.weights();
        for (int b : gatherOrder) {
            GradBuffer.Bucket bucket = plan.buckets().get(b);
            Communicator g = groups[bucket.group()];
            gathersInFlight++;
            if (g.size() == 1) {
                gathering[b] = CommLane.Pending.DONE; // nothing to gather; its 16-bit rounding still follows
                continue;
            }
            Tensor all = weights.slice(bucket.start(), bucket.numel());
            Tensor mine = weights.slice(bucket.shardStart(g.rank(), g.size()), bucket.shardNumel(g.size()));
            gathering[b] = lane.submit(() -> {
                long t0 = System.nanoTime();
                g.allGather(mine, all);
                gatherNanos += System.nanoTime() - t0; // one lane thread; read by the rank after the awaits
            });
        }
        return true;
    }

    /**
     * The forward pre-hook: waits for the all-gather of every bucket holding one of {@code paramIndices} that
     * is still in flight (and treats it, see {@link #setAfterParamGather}). Nothing to do when no gather is in
     * flight. Rethrows a failed gather's exception.
     */
    @Override
    public void beforeUse(int[] paramIndices) {
        if (gathersInFlight == 0) {
            return;
        }
        for (int p : paramIndices) {
            int b = bucketOf[p];
            if (b >= 0 && gathering[b] != null) {
                awaitGather(b);
            }
        }
    }

    private void awaitGather(int b) {
        CommLane.Pending w = gathering[b];
        gathering[b] = null;
        gathersInFlight--;
        long t0 = System.nanoTime();
        try {
            w.await();
        } finally {
            gatherWaitNanos += System.nanoTime() - t0;
        }
        bucketsAwaited++;
        afterGather.accept(b);
    }

    /**
     * Completes the parameter all-gather: issues it if it was deferred, then waits for every bucket still in
     * flight. Afterwards the whole weight block is current. Called at the end of every pass, and by whatever
     * reads or replaces the weights outside one; a collective of the data-parallel group when a gather was
     * deferred (every rank reaches it at the same point of the same sequence of steps). Nothing to do otherwise.
     */
    public void finishParamGather() {
        startParamGather();
        if (gathersInFlight == 0) {
            return;
        }
        for (int b : gatherOrder) {
            if (gathering[b] != null) {
                awaitGather(b);
            }
        }
    }

    /**
     * The deferred parameter all-gathers so far: buckets the forward waited for, nanoseconds they ran on the
     * lane and nanoseconds the rank's thread blocked for them ({@code {buckets, gather, wait}}), for tests and
     * benchmarks.
     */
    public long[] paramGatherStats() {
        return new long[] {bucketsAwaited, gatherNanos, gatherWaitNanos};
    }

    /** Stops the lane. The communicators stay the caller's. */
    public void close() {
        lane.close();
    }
}
