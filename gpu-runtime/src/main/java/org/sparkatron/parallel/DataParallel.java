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
     * @param overlapParamGather   with the distributed optimizer, all-gather the updated parameters during the
     *                             next forward pass, bucket by bucket, each awaited just before the first layer
     *                             that reads it (Megatron's {@code overlap_param_gather}); needs
     *                             {@code distributedOptimizer} and {@code overlapGradReduce}, as in Megatron
     */
    public record Config(boolean distributedOptimizer, long bucketElements, boolean overlapGradReduce,
                         boolean overlapParamGather) {
        public Config {
            if (bucketElements < 0) {
                throw new IllegalArgumentException("bucket size must be >= 0 elements (0: Megatron's default), got " + bucketElements);
            }
            if (overlapParamGather && !distributedOptimizer) {
                throw new IllegalArgumentException("overlap_param_gather needs use_distributed_optimizer: without the distributed "
                        + "optimizer every replica updates all its parameters and there is no parameter all-gather to overlap");
            }
            if (overlapParamGather && !overlapGradReduce) {
                throw new IllegalArgumentException("overlap_param_gather needs overlap_grad_reduce (as in Megatron): the parameter "
                        + "all-gathers run on the communication lane that overlapping the gradient reduction provides");
            }
        }

        /** Without overlapping the parameter all-gather. */
        public Config(boolean distributedOptimizer, long bucketElements, boolean overlapGradReduce) {
            this(distributedOptimizer, bucketElements, overlapGradReduce, false);
        }

        /** Megatron's defaults: plain all-reduce, default bucket size, overlapped reduction. */
        public static Config defaults() {
            return new Config(false, 0, true);
        }

        public Config withDistributedOptimizer(boolean on) {
            return new Config(on, bucketElements, overlapGradReduce, overlapParamGather);
        }

        public Config withBucketElements(long elements) {
            return new Config(distributedOptimizer, elements, overlapGradReduce, overlapParamGather);
        }

        public Config withOverlap(boolean on) {
            return new Config(distributedOptimizer, bucketElements, on, overlapParamGather);
        }

        /** {@code overlapParamGather} on or off (on needs the distributed optimizer and overlapped reduction). */
        public Config withOverlapParamGather(boolean on) {
            return new Config(distributedOptimizer, bucketElements, overlapGradReduce, on);
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
        return "DP " + group.rank() + "/" + group.size() + (config.distributedOptimizer() ? " (distributed optimizer"
                + (config.overlapParamGather() ? ", overlapped parameter gather)" : ")") : "");
    }
}
