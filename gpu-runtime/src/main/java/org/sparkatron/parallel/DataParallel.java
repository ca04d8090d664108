package org.sparkatron.parallel;

import java.util.Objects;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.SelfCommunicator;

/**
 * One rank's data-parallel group and how gradients are reduced over it (Megatron's
 * {@code DistributedDataParallelConfig}), passed in the {@link RankContext} like the tensor- and
 * pipeline-parallel groups. A model built with it lays its parameters out in Megatron's gradient buffer
 * order ({@link GradBuffer}), reduces gradient buckets as its backward finishes them
 * ({@link DistributedDataParallel}) and, with the distributed optimizer, keeps optimizer state for its
 * shard only.
 *
 * <p>The group is whatever set of ranks holds replicas of the same parameters and averages their
 * gradients: the data-parallel group, or data x context parallel when context parallelism splits the
 * sequence (Megatron's {@code with_context_parallel=True}). Immutable; the communicator belongs to the
 * caller.
 */
public final class DataParallel {
    /**
     * How gradients are reduced. {@code bucketElements} 0 means Megatron's default,
     * {@code max(40,000,000, 1,000,000 x dp)} elements; without {@code overlapGradReduce} each buffer is
     * one bucket reduced after the backward (Megatron sets {@code bucket_size = None} then).
     *
     * @param distributedOptimizer ZeRO-1 (Megatron's {@code use_distributed_optimizer}): gradients are
     *                             reduce-scattered, each rank updates its shard, parameters are all-gathered
     * @param bucketElements       gradient elements per bucket (Megatron's {@code bucket_size}); 0: default
     * @param overlapGradReduce    start a bucket's reduction as soon as its gradients are final
     */
    public record Config(boolean distributedOptimizer, long bucketElements, boolean overlapGradReduce) {
        public Config {
            if (bucketElements < 0) {
                throw new IllegalArgumentException("bucket size must be >= 0 elements (0: Megatron's default), got " + bucketElements);
            }
        }

        /** Megatron's defaults: plain all-reduce, default bucket size, overlapped reduction. */
        public static Config defaults() {
            return new Config(false, 0, true);
        }

        public Config withDistributedOptimizer(boolean on) {
            return new Config(on, bucketElements, overlapGradReduce);
        }

        public Config withBucketElements(long elements) {
            return new Config(distributedOptimizer, elements, overlapGradReduce);
        }

        public Config withOverlap(boolean on) {
            return new Config(distributedOptimizer, bucketElements, on);
        }

        /**
         * Elements per bucket for a data-parallel group of {@code dpSize}: Long.MAX_VALUE (one bucket per
         * buffer) without overlap, else the configured size or Megatron's default.
         */
        public long bucketElements(int dpSize) {
            if (!overlapGradReduce) {
                return Long.MAX_VALUE;
            }
            return bucketElements > 0 ? bucketElements : defaultBucketElements(dpSize);
        }
    }

    /** Megatron's default bucket size: {@code max(40000000, 1000000 * data_parallel_size)} elements. */
    public static long defaultBucketElements(int dpSize) {
        return Math.max(40_000_000L, 1_000_000L * dpSize);
    }

    private final Communicator group;
    private final Config config;

    /** @param group the ranks that average this rank's gradients (data parallel, or data x context parallel) */
    public DataParallel(Communicator group, Config config) {
        this.group = Objects.requireNonNull(group, "data-parallel group");
        this.config = Objects.requireNonNull(config, "data-parallel config");
    }

    /** A rank without replicas (a group of one) that still lays out and reduces gradients as configured. */
    public static DataParallel single(Config config) {
        return new DataParallel(new SelfCommunicator(), config);
    }

    public Communicator group() {
        return group;
    }

    public int size() {
        return group.size();
    }

    public int rank() {
        return group.rank();
    }

    public Config config() {
        return config;
    }

    @Override
    public String toString() {
        return "DP " + group.rank() + "/" + group.size() + (config.distributedOptimizer() ? " (distributed optimizer)" : "");
    }
}
