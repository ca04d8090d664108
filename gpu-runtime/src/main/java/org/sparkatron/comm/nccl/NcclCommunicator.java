package org.sparkatron.comm.nccl;

import static org.bytedeco.cuda.global.nccl.ncclAllGather;
import static org.bytedeco.cuda.global.nccl.ncclAllReduce;
import static org.bytedeco.cuda.global.nccl.ncclBroadcast;
import static org.bytedeco.cuda.global.nccl.ncclCommDestroy;
import static org.bytedeco.cuda.global.nccl.ncclCommGetAsyncError;
import static org.bytedeco.cuda.global.nccl.ncclCommInitRank;
import static org.bytedeco.cuda.global.nccl.ncclGetErrorString;
import static org.bytedeco.cuda.global.nccl.ncclGetUniqueId;
import static org.bytedeco.cuda.global.nccl.ncclGetVersion;
import static org.bytedeco.cuda.global.nccl.ncclGroupEnd;
import static org.bytedeco.cuda.global.nccl.ncclGroupStart;
import static org.bytedeco.cuda.global.nccl.ncclRecv;
import static org.bytedeco.cuda.global.nccl.ncclReduceScatter;
import static org.bytedeco.cuda.global.nccl.ncclSend;

import java.time.Duration;
import java.util.Arrays;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.nccl.ncclComm;
import org.bytedeco.cuda.nccl.ncclUniqueId;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Pointer;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.Rendezvous;
import org.sparkatron.comm.Request;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.device.cuda.CudaDevice;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * {@link Communicator} over NCCL (JavaCPP's presets) for ranks on CUDA devices, one rank per GPU.
 *
 * <h2>Ordering</h2>
 * Every operation is device work: it is queued on the device's communication stream after everything the
 * rank queued on its compute stream, and later compute work waits for it (events both ways), so the
 * rank's kernels, copies and communication execute in issue order. Issued inside an operation of the
 * device's communication queue ({@link CudaDevice#communicationQueue()}), it is queued on that queue's
 * stream instead and the compute waits only when the queue's caller orders it (overlapped gradient
 * reduction). One communicator's operations must all go to one of the two (NCCL runs a communicator's
 * collectives in issue order on every rank only within a stream): the data-parallel group's go to the queue. Calls return once queued; results are
 * visible to the host after {@link CudaDevice#synchronize()}. Uneven all-gather, all-to-all and
 * point-to-point use NCCL's grouped send/recv. NCCL matches point-to-point by order per peer, not by tag:
 * both sides must post their sends and receives to a peer in the same order, and a blocking exchange
 * must post both directions before waiting (a send completes only once the peer's receive is posted).
 *
 * <h2>Failure</h2>
 * A watchdog ({@link NcclWatchdog}) follows every queued operation; when one has not completed within the
 * timeout, or NCCL reports an asynchronous error (a peer died), it calls {@code ncclCommAbort}, which
 * releases the stuck operations, and the communicator fails: the next operation, the next
 * {@link CudaDevice#synchronize()} and every {@link Request#await()} throw {@link CommException} naming
 * the cause. NCCL's version is checked at creation (2.18 or newer); only calls NCCL has had since 2.18 are
 * used, because calling a symbol an older library lacks kills the JVM.
 *
 * <p>Threading: one rank's thread issues operations (as the device); {@link #abort} from any thread.
 */
public final class NcclCommunicator implements Communicator {
    /** The oldest NCCL whose API this class relies on (ncclAvg, bf16, grouped p2p): 2.18.0. */
    static final int MIN_VERSION = 21800;

    private final CudaDevice device;
    private final int rank;
    private final int size;
    private final ncclComm comm;
    private final CUstream_st commStream;  // the device's communication stream
    private final CUstream_st queueStream; // its communication queue's
    private final NcclWatchdog watchdog;
    private final Duration timeout;
    private Tensor scratch;
    private boolean closed;

    private NcclCommunicator(CudaDevice device, int rank, int size, ncclComm comm, Duration timeout) {
        this.device = device;
        this.rank = rank;
        this.size = size;
        this.comm = comm;
        this.timeout = timeout;
        this.commStream = new CUstream_st(at(device.communicationStreamAddress()));
        this.queueStream = new CUstream_st(at(device.communicationQueueStreamAddress()));
        this.watchdog = new NcclWatchdog("nccl rank " + rank + "/" + size, comm, timeout);
        device.addSynchronizeCheck(this::throwIfFailed);
    }

    /**
     * Creates the communicator of {@code rendezvous}'s ranks on {@code device}: rank 0 makes the NCCL unique
     * id and every rank receives it through the rendezvous (in Spark, the barrier task context's allGather),
     * then all ranks join ({@code ncclCommInitRank} blocks until they have).
     */
    public static NcclCommunicator create(CudaDevice device, Rendezvous rendezvous, Duration timeout) {
        checkVersion();
        device.makeCurrent();
        byte[] mine = new byte[0];
        if (rendezvous.rank() == 0) {
            ncclUniqueId id = new ncclUniqueId();
            check(ncclGetUniqueId(id), "ncclGetUniqueId");
            mine = new byte[128];
            new BytePointer(id).capacity(128).get(mine);
        }
        byte[][] all = rendezvous.allGather(mine);
        if (all[0].length != 128) {
            throw new CommException("rank 0 published a " + all[0].length + "-byte NCCL id (128 expected)", 0);
        }
        return join(device, all[0], rendezvous.rank(), rendezvous.size(), timeout);
    }

    private static NcclCommunicator join(CudaDevice device, byte[] idBytes, int rank, int size, Duration timeout) {
        ncclUniqueId id = new ncclUniqueId();
        new BytePointer(id).capacity(128).put(idBytes);
        ncclComm comm = new ncclComm();
        device.makeCurrent();
        check(ncclCommInitRank(comm, size, id, rank), "ncclCommInitRank(rank " + rank + " of " + size + ")");
        return new NcclCommunicator(device, rank, size, comm, timeout);
    }

    /** The NCCL version this process loaded, e.g. 22703 for 2.27.3. */
    public static int version() {
        int[] v = new int[1];
        check(ncclGetVersion(v), "ncclGetVersion");
        return v[0];
    }

    private static void checkVersion() {
        int v;
        try {
            v = version();
        } catch (LinkageError e) {
            throw new CommException("NCCL (libnccl.so.2 through JavaCPP) did not load: " + e, -1, e);
        }
        if (v < MIN_VERSION) {
            throw new CommException("NCCL " + v / 10000 + "." + v / 100 % 100 + "." + v % 100 + " is too old: 2.18 or newer is needed", -1);
        }
    }

    static void check(int result, String call) {
        if (result != 0) {
            throw new CommException(call + ": NCCL error " + result + " (" + ncclGetErrorString(result).getString() + ")", -1);
        }
    }

    /** A JavaCPP pointer at a raw address (the parameter may not be named {@code address}: Pointer's field). */
    static Pointer at(long raw) {
        return new Pointer() {
            {
                this.address = raw;
            }
        };
    }

    private static int type(Tensor t) {
        return switch (t.dtype()) {
            case F32 -> org.bytedeco.cuda.global.nccl.ncclFloat32;
            case F64 -> org.bytedeco.cuda.global.nccl.ncclFloat64;
            case BF16 -> org.bytedeco.cuda.global.nccl.ncclBfloat16;
            case F16 -> org.bytedeco.cuda.global.nccl.ncclFloat16;
            case I32 -> org.bytedeco.cuda.global.nccl.ncclInt32;
            case I64 -> org.bytedeco.cuda.global.nccl.ncclInt64;
            default -> throw new IllegalArgumentException("NCCL cannot move " + t.dtype() + " tensors");
        };
    }

    private static int op(ReduceOp op) {
        return switch (op) {
            case SUM -> org.bytedeco.cuda.global.nccl.ncclSum;
            case MAX -> org.bytedeco.cuda.global.nccl.ncclMax;
            case MIN -> org.bytedeco.cuda.global.nccl.ncclMin;
            case AVG -> org.bytedeco.cuda.global.nccl.ncclAvg;
        };
    }

    private void throwIfFailed() {
        String why = watchdog.failure();
        if (why != null) {
            throw new CommException("NCCL communicator (rank " + rank + " of " + size + ") failed: " + why, -1);
        }
    }

    /** The stream this call queues on: the communication queue's inside one of its operations. */
    private CUstream_st stream() {
        return device.communicationStreamAddress() == commStream.address() ? commStream : queueStream;
    }

    /** Queues one operation: ordered after compute, followed by the watchdog, compute ordered after it. */
    private Request issue(String what, Runnable call) {
        throwIfFailed();
        if (closed) {
            throw new CommException("NCCL communicator is closed", -1);
        }
        device.beginCommunication();
        call.run();
        device.endCommunication();
        return watchdog.follow(what, device.recordCommunicationEvent());
    }

    private Pointer ptr(Tensor t) {
        if (t.isHost()) {
            throw new IllegalArgumentException("NCCL works on device tensors; got a host tensor " + t);
        }
        return at(t.address());
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return size;
    }

    @Override
    public void allReduce(Tensor t, ReduceOp reduceOp) {
        issue("allReduce(" + t.numel() + " " + t.dtype() + ")",
                () -> check(ncclAllReduce(ptr(t), ptr(t), t.numel(), type(t), op(reduceOp), comm, stream()), "ncclAllReduce"));
    }

    @Override
    public void reduceScatter(Tensor in, Tensor out, ReduceOp reduceOp) {
        sameType(in, out);
        if (in.numel() != out.numel() * size) {
            throw new IllegalArgumentException("reduceScatter of " + in.numel() + " elements into " + size + " x " + out.numel());
        }
        issue("reduceScatter(" + in.numel() + " " + in.dtype() + ")",
                () -> check(ncclReduceScatter(ptr(in), ptr(out), out.numel(), type(in), op(reduceOp), comm, stream()), "ncclReduceScatter"));
    }

    @Override
    public void allGather(Tensor in, Tensor out) {
        sameType(in, out);
        if (out.numel() != in.numel() * size) {
            throw new IllegalArgumentException("allGather of " + size + " x " + in.numel() + " elements into " + out.numel());
        }
        issue("allGather(" + in.numel() + " " + in.dtype() + ")",
                () -> check(ncclAllGather(ptr(in), ptr(out), in.numel(), type(in), comm, stream()), "ncclAllGather"));
    }

    @Override
    public void allGatherV(Tensor in, Tensor out, int[] counts) {
        sameType(in, out);
        if (counts.length != size || in.numel() != counts[rank] || out.numel() != Arrays.stream(counts).asLongStream().sum()) {
            throw new IllegalArgumentException("allGatherV counts " + Arrays.toString(counts) + " do not match " + in.numel()
                    + " in and " + out.numel() + " out elements");
        }
        int[] send = new int[size];
        Arrays.fill(send, counts[rank]);
        exchange("allGatherV", in, send, true, out, counts);
    }

    @Override
    public void broadcast(Tensor t, int root) {
        if (root < 0 || root >= size) {
            throw new IllegalArgumentException("broadcast root " + root + " outside [0, " + size + ")");
        }
        issue("broadcast(" + t.numel() + " " + t.dtype() + ", root " + root + ")",
                () -> check(ncclBroadcast(ptr(t), ptr(t), t.numel(), type(t), root, comm, stream()), "ncclBroadcast"));
    }

    @Override
    public void allToAll(Tensor in, int[] sendCounts, Tensor out, int[] recvCounts) {
        sameType(in, out);
        if (sendCounts.length != size || recvCounts.length != size
                || in.numel() != Arrays.stream(sendCounts).asLongStream().sum()
                || out.numel() != Arrays.stream(recvCounts).asLongStream().sum()) {
            throw new IllegalArgumentException("allToAll counts " + Arrays.toString(sendCounts) + " / " + Arrays.toString(recvCounts)
                    + " do not match " + in.numel() + " in and " + out.numel() + " out elements");
        }
        exchange("allToAll", in, sendCounts, false, out, recvCounts);
    }

    /**
     * Grouped send/recv: to peer p, {@code sendCounts[p]} elements (from offset 0 of {@code in} when
     * {@code sameBlock}, else from in's p-th block); from p, {@code recvCounts[p]} elements into out's p-th
     * block. The rank's own block is a device copy.
     */
    private void exchange(String what, Tensor in, int[] sendCounts, boolean sameBlock, Tensor out, int[] recvCounts) {
        long eb = in.dtype().bytes();
        issue(what + "(" + in.numel() + " -> " + out.numel() + " " + in.dtype() + ")", () -> {
            check(ncclGroupStart(), "ncclGroupStart");
            long sendOff = 0, recvOff = 0;
            for (int p = 0; p < size; p++) {
                long from = sameBlock ? 0 : sendOff;
                if (p != rank && sendCounts[p] > 0) {
                    check(ncclSend(at(in.address() + from * eb), sendCounts[p], type(in), p, comm, stream()), "ncclSend(to " + p + ")");
                }
                if (p != rank && recvCounts[p] > 0) {
                    check(ncclRecv(at(out.address() + recvOff * eb), recvCounts[p], type(out), p, comm, stream()), "ncclRecv(from " + p + ")");
                }
                if (p == rank && recvCounts[p] > 0) {
                    if (sendCounts[p] != recvCounts[p]) {
                        throw new IllegalArgumentException(what + ": rank " + rank + " sends itself " + sendCounts[p] + " but receives " + recvCounts[p]);
                    }
                    // own block: copied by the peer-less path below, after the group
                }
                sendOff += sendCounts[p];
                recvOff += recvCounts[p];
            }
            check(ncclGroupEnd(), "ncclGroupEnd");
        });
        long sendOff = 0, recvOff = 0;
        for (int p = 0; p < rank; p++) {
            sendOff += sendCounts[p];
            recvOff += recvCounts[p];
        }
        if (recvCounts[rank] > 0) {
            long from = sameBlock ? 0 : sendOff;
            device.copy(out.slice(recvOff, recvCounts[rank]), in.slice(from, recvCounts[rank]));
        }
    }

    @Override
    public Request isend(Tensor t, int peer, int tag) {
        checkPeer(peer, tag);
        return issue("send(" + t.numel() + " " + t.dtype() + " to " + peer + ")", () -> {
            check(ncclGroupStart(), "ncclGroupStart");
            check(ncclSend(ptr(t), t.numel(), type(t), peer, comm, stream()), "ncclSend(to " + peer + ")");
            check(ncclGroupEnd(), "ncclGroupEnd");
        });
    }

    @Override
    public Request irecv(Tensor t, int peer, int tag) {
        checkPeer(peer, tag);
        return issue("recv(" + t.numel() + " " + t.dtype() + " from " + peer + ")", () -> {
            check(ncclGroupStart(), "ncclGroupStart");
            check(ncclRecv(ptr(t), t.numel(), type(t), peer, comm, stream()), "ncclRecv(from " + peer + ")");
            check(ncclGroupEnd(), "ncclGroupEnd");
        });
    }

    /**
     * Sends {@code send} to {@code to} and receives {@code recv} from {@code from} as one grouped
     * operation: the form of an exchange that cannot deadlock on NCCL.
     */
    public Request sendRecv(Tensor send, int to, Tensor recv, int from) {
        checkPeer(to, 0);
        checkPeer(from, 0);
        return issue("sendRecv(to " + to + ", from " + from + ")", () -> {
            check(ncclGroupStart(), "ncclGroupStart");
            check(ncclSend(ptr(send), send.numel(), type(send), to, comm, stream()), "ncclSend(to " + to + ")");
            check(ncclRecv(ptr(recv), recv.numel(), type(recv), from, comm, stream()), "ncclRecv(from " + from + ")");
            check(ncclGroupEnd(), "ncclGroupEnd");
        });
    }

    @Override
    public void barrier() {
        if (scratch == null) {
            scratch = device.allocate(MemoryKind.WORKSPACE, DType.F32, 1);
            device.kernels().fill(scratch, 0f);
        }
        allReduce(scratch, ReduceOp.SUM);
        device.synchronize();
    }

    @Override
    public void abort(String reason) {
        watchdog.abort(reason);
    }

    /**
     * A communicator of a subset of this group: its first rank makes a new NCCL id and sends it to the
     * others over this communicator (so, unlike the TCP transport, creating a group sends 128 bytes), then
     * all of them join.
     */
    @Override
    public Communicator subGroup(int groupId, int[] ranks) {
        int me = Arrays.binarySearch(ranks, rank);
        if (me < 0) {
            throw new IllegalArgumentException("rank " + rank + " is not in sub-group " + Arrays.toString(ranks));
        }
        Tensor id = device.allocate(MemoryKind.WORKSPACE, DType.I32, 32);
        byte[] bytes = new byte[128];
        if (me == 0) {
            ncclUniqueId uid = new ncclUniqueId();
            check(ncclGetUniqueId(uid), "ncclGetUniqueId");
            new BytePointer(uid).capacity(128).get(bytes);
            device.upload(id, java.nio.ByteBuffer.allocateDirect(128).put(bytes).flip());
            for (int i = 1; i < ranks.length; i++) {
                isend(id, ranks[i], groupId);
            }
        } else {
            irecv(id, ranks[0], groupId);
        }
        java.nio.ByteBuffer host = java.nio.ByteBuffer.allocateDirect(128);
        device.download(host, id);
        device.release(id);
        host.get(bytes);
        return join(device, bytes, me, ranks.length, timeout);
    }

    private void checkPeer(int peer, int tag) {
        if (peer < 0 || peer >= size || peer == rank) {
            throw new IllegalArgumentException("peer " + peer + " outside the group of " + size + " (or this rank)");
        }
        if (tag < 0) {
            throw new IllegalArgumentException("negative tag " + tag);
        }
    }

    private static void sameType(Tensor a, Tensor b) {
        if (a.dtype() != b.dtype()) {
            throw new IllegalArgumentException("tensors of " + a.dtype() + " and " + b.dtype());
        }
    }

    /** Destroys the NCCL communicator after its queued work (or aborts it if it failed). Idempotent. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        watchdog.close();
        if (scratch != null) {
            device.release(scratch);
        }
        if (watchdog.release()) {
            device.makeCurrent();
            device.synchronize();
            ncclCommDestroy(comm);
        } // else the watchdog aborted it, which freed it: aborting again would be a use after free
    }

    /** Asynchronous error from NCCL (0 when none). */
    static int asyncError(ncclComm comm) {
        int[] e = new int[1];
        ncclCommGetAsyncError(comm, e);
        return e[0];
    }
}
