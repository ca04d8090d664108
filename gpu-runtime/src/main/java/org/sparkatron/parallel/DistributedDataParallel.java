package org.sparkatron.parallel;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
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
public final class DistributedDataParallel implements GradientSync, GradReadyHook {
    private final ParameterSet params;
    private final GradBuffer plan;
    private final Communicator[] groups;
    private final int[] groupRanks;
    private final CommLane lane;
    private final boolean overlap;
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
     */
    public DistributedDataParallel(ParameterSet params, GradBuffer plan, Communicator[] groups, CommLane lane,
                                   boolean overlap) {
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

    /** Stops the lane. The communicators stay the caller's. */
    public void close() {
        lane.close();
    }
}
