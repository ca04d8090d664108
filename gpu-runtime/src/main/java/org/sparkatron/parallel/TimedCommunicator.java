package org.sparkatron.parallel;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Request;
import org.sparkatron.tensor.Tensor;

/**
 * A {@link Communicator} that forwards every call to another and adds the wall time spent in blocking
 * collectives to a counter: how benchmarks measure the share of a step spent communicating (time
 * waiting for the slowest peer included, as a profiler would see it). Same threading, blocking and
 * failure behaviour as the wrapped communicator; the counter is read by the owning rank's thread.
 */
public final class TimedCommunicator implements Communicator {
    private final Communicator inner;
    private long nanos;
    private long calls;

    public TimedCommunicator(Communicator inner) {
        this.inner = inner;
    }

    /** Nanoseconds spent in collectives so far. */
    public long nanos() {
        return nanos;
    }

    /** Collective calls so far. */
    public long calls() {
        return calls;
    }

    public void reset() {
        nanos = 0;
        calls = 0;
    }

    private void add(long t0) {
        nanos += System.nanoTime() - t0;
        calls++;
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
        long t0 = System.nanoTime();
        inner.allReduce(t, op);
        add(t0);
    }

    @Override
    public void reduceScatter(Tensor in, Tensor out, ReduceOp op) {
        long t0 = System.nanoTime();
        inner.reduceScatter(in, out, op);
        add(t0);
    }

    @Override
    public void allGather(Tensor in, Tensor out) {
        long t0 = System.nanoTime();
        inner.allGather(in, out);
        add(t0);
    }

    @Override
    public void allGatherV(Tensor in, Tensor out, int[] counts) {
        long t0 = System.nanoTime();
        inner.allGatherV(in, out, counts);
        add(t0);
    }

    @Override
    public void broadcast(Tensor t, int root) {
        long t0 = System.nanoTime();
        inner.broadcast(t, root);
        add(t0);
    }

    @Override
    public void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts) {
        long t0 = System.nanoTime();
        inner.allToAll(in, sendCounts, out, recvCounts);
        add(t0);
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
        long t0 = System.nanoTime();
        inner.barrier();
        add(t0);
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
        inner.close();
    }
}
