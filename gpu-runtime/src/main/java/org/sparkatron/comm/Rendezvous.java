package org.sparkatron.comm;

/**
 * How the ranks of a job find each other: every rank publishes one blob and receives every rank's blob,
 * indexed by rank. The TCP communicator publishes its "host:port"; the NCCL communicator its unique id.
 *
 * <p>Implementations: {@link InProcessRendezvous} (ranks as threads of one JVM, for tests),
 * {@link FileRendezvous} (processes on one host sharing a directory, for tests and benchmarks), and in the
 * Spark integration one backed by {@code BarrierTaskContext.allGather}.
 *
 * <p>Blocking: {@link #allGather} returns only when every rank has called it, or throws
 * {@link CommException} after the implementation's timeout naming the ranks that did not arrive. Calls
 * are collective: every rank makes the same sequence of calls. One instance belongs to one rank's thread.
 */
public interface Rendezvous {
    int rank();

    int size();

    /** Publishes {@code mine} and returns all ranks' blobs; element {@code r} is rank r's blob. */
    byte[][] allGather(byte[] mine);
}
