// The emulated NCCL (libnccl.so.2) for ranks that are threads of one process (each on its own emulated
// device). A communicator's operations are queued on the caller's stream; a collective waits on its stream
// thread until every rank of the clique reached the same operation, then the last arrival computes every
// rank's output (reductions in double, rounded once to the element type, so every rank gets identical bits).
//
// Point-to-point follows NCCL's rules: an ungrouped send completes only once the peer's matching receive
// ran (so two ranks that both send first deadlock, as they may with NCCL); sends and receives between
// ncclGroupStart/End run as one operation, sends first. ncclCommAbort releases every waiting operation of
// the clique; the aborted operations leave outputs untouched and the communicators report
// ncclRemoteError through ncclCommGetAsyncError (NCCL's contract: after an error, abort and recreate).
#include "emu_runtime.h"
#include "sparkatron_emu_halfbits.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" CUresult cuCtxGetDevice(CUdevice* d);

namespace {

enum : int { ncclSuccess = 0, ncclSystemError = 2, ncclInternalError = 3, ncclInvalidArgument = 4, ncclInvalidUsage = 5,
             ncclRemoteError = 6 };
enum : int { tInt8 = 0, tUint8, tInt32, tUint32, tInt64, tUint64, tFloat16, tFloat32, tFloat64, tBfloat16 };
enum : int { opSum = 0, opProd, opMax, opMin, opAvg };

struct UniqueId {
    char internal[128];
};

size_t bytesOf(int t) {
    switch (t) {
        case tInt8: case tUint8: return 1;
        case tFloat16: case tBfloat16: return 2;
        case tInt32: case tUint32: case tFloat32: return 4;
        default: return 8;
    }
}

double loadD(const void* p, int t, size_t i) {
    switch (t) {
        case tInt8: return static_cast<const int8_t*>(p)[i];
        case tUint8: return static_cast<const uint8_t*>(p)[i];
        case tInt32: return static_cast<const int32_t*>(p)[i];
        case tUint32: return static_cast<const uint32_t*>(p)[i];
        case tInt64: return (double) static_cast<const int64_t*>(p)[i];
        case tUint64: return (double) static_cast<const uint64_t*>(p)[i];
        case tFloat16: return sparkatron_half_to_float(static_cast<const uint16_t*>(p)[i]);
        case tFloat32: return static_cast<const float*>(p)[i];
        case tFloat64: return static_cast<const double*>(p)[i];
        default: return sparkatron_bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    }
}

void storeD(void* p, int t, size_t i, double v) {
    switch (t) {
        case tInt8: static_cast<int8_t*>(p)[i] = (int8_t) v; break;
        case tUint8: static_cast<uint8_t*>(p)[i] = (uint8_t) v; break;
        case tInt32: static_cast<int32_t*>(p)[i] = (int32_t) v; break;
        case tUint32: static_cast<uint32_t*>(p)[i] = (uint32_t) v; break;
        case tInt64: static_cast<int64_t*>(p)[i] = (int64_t) v; break;
        case tUint64: static_cast<uint64_t*>(p)[i] = (uint64_t) v; break;
        case tFloat16: static_cast<uint16_t*>(p)[i] = sparkatron_float_to_half((float) v); break;
        case tFloat32: static_cast<float*>(p)[i] = (float) v; break;
        case tFloat64: static_cast<double*>(p)[i] = v; break;
        default: static_cast<uint16_t*>(p)[i] = sparkatron_float_to_bf16((float) v); break;
    }
}

struct Arrival {
    const void* send;
    void* recv;
};

struct Round {
    std::vector<Arrival> arrivals;
    int arrived = 0;
    bool done = false;
};

struct Message {
    std::vector<unsigned char> bytes;
    bool consumed = false;
};

struct Clique {
    int nranks;
    std::mutex mu;
    std::condition_variable cv;
    int joined = 0;
    bool aborted = false;
    std::map<uint64_t, Round> rounds;
    std::map<std::pair<int, int>, std::deque<std::shared_ptr<Message>>> mail;  // (from, to) -> FIFO
};

struct Comm {
    std::shared_ptr<Clique> clique;
    int rank;
    int device;
    uint64_t nextRound = 0;
    std::atomic<int> asyncError{ncclSuccess};
    bool destroyed = false;
};

std::mutex gMu;
std::map<std::string, std::shared_ptr<Clique>> gCliques;

struct PendingP2p {
    bool send;
    void* buf;
    size_t count;
    int type;
    int peer;
    Comm* comm;
    CUstream stream;
};
thread_local int tlGroupDepth = 0;
thread_local std::vector<PendingP2p> tlGroup;

/** Waits (on a stream thread) until pred() or the clique is aborted; returns false when aborted. */
template <class P>
bool waitFor(Clique& c, std::unique_lock<std::mutex>& lock, P pred) {
    c.cv.wait(lock, [&] { return c.aborted || pred(); });
    return !c.aborted;
}

int collective(Comm* comm, CUstream stream, const void* send, void* recv, const char* what,
               std::function<void(std::vector<Arrival>&)> compute) {
    if (comm == nullptr || comm->destroyed) return ncclInvalidArgument;
    if (comm->asyncError.load() != ncclSuccess) return comm->asyncError.load();
    uint64_t id = comm->nextRound++;
    std::string name = what;
    CUresult r = emu::enqueue(stream, [comm, id, send, recv, compute, name] {
        Clique& c = *comm->clique;
        std::unique_lock<std::mutex> lock(c.mu);
        Round& round = c.rounds[id];
        if (round.arrivals.empty()) round.arrivals.resize(c.nranks);
        round.arrivals[comm->rank] = Arrival{send, recv};
        if (++round.arrived == c.nranks) {
            compute(round.arrivals);
            round.done = true;
            c.cv.notify_all();
        } else if (!waitFor(c, lock, [&] { return round.done; })) {
            comm->asyncError = ncclRemoteError;
            emu::report("nccl " + name + " of rank " + std::to_string(comm->rank) + " aborted");
            return;
        }
        if (--round.arrived == 0) c.rounds.erase(id);
    });
    return r == CUDA_SUCCESS ? ncclSuccess : 1;  // ncclUnhandledCudaError
}

void runP2p(const std::vector<PendingP2p>& ops) {
    // sends first (buffered), then receives, then wait until our sends were received
    std::vector<std::shared_ptr<Message>> sent;
    for (const auto& op : ops) {
        if (!op.send) continue;
        Clique& c = *op.comm->clique;
        auto m = std::make_shared<Message>();
        const auto* p = static_cast<const unsigned char*>(op.buf);
        m->bytes.assign(p, p + op.count * bytesOf(op.type));
        std::lock_guard<std::mutex> lock(c.mu);
        c.mail[{op.comm->rank, op.peer}].push_back(m);
        sent.push_back(m);
        c.cv.notify_all();
    }
    for (const auto& op : ops) {
        if (op.send) continue;
        Clique& c = *op.comm->clique;
        std::unique_lock<std::mutex> lock(c.mu);
        auto& q = c.mail[{op.peer, op.comm->rank}];
        if (!waitFor(c, lock, [&] { return !q.empty(); })) {
            op.comm->asyncError = ncclRemoteError;
            return;
        }
        auto m = q.front();
        q.pop_front();
        size_t want = op.count * bytesOf(op.type);
        if (m->bytes.size() != want) {
            op.comm->asyncError = ncclInvalidUsage;
            m->consumed = true;
            c.cv.notify_all();
            throw emu::Failure("ncclRecv of " + std::to_string(want) + " bytes from rank " + std::to_string(op.peer)
                               + " matched a send of " + std::to_string(m->bytes.size()) + " bytes");
        }
        std::memcpy(op.buf, m->bytes.data(), want);
        m->consumed = true;
        c.cv.notify_all();
    }
    for (size_t i = 0; i < sent.size(); i++) {
        Clique& c = *ops[0].comm->clique;
        std::unique_lock<std::mutex> lock(c.mu);
        if (!waitFor(c, lock, [&] { return sent[i]->consumed; })) {
            ops[0].comm->asyncError = ncclRemoteError;
            return;
        }
    }
}

int p2p(bool send, void* buf, size_t count, int type, int peer, Comm* comm, CUstream stream) {
    if (comm == nullptr || comm->destroyed) return ncclInvalidArgument;
    if (peer < 0 || peer >= comm->clique->nranks) return ncclInvalidArgument;
    if (comm->asyncError.load() != ncclSuccess) return comm->asyncError.load();
    PendingP2p op{send, buf, count, type, peer, comm, stream};
    if (tlGroupDepth > 0) {
        tlGroup.push_back(op);
        return ncclSuccess;
    }
    std::vector<PendingP2p> ops{op};
    return emu::enqueue(stream, [ops] { runP2p(ops); }) == CUDA_SUCCESS ? ncclSuccess : 1;
}

double reduce(double a, double b, int op) {
    switch (op) {
        case opProd: return a * b;
        case opMax: return std::max(a, b);
        case opMin: return std::min(a, b);
        default: return a + b;
    }
}

}  // namespace

extern "C" {

int ncclGetVersion(int* v) {
    *v = 22703;  // 2.27.3, the version the emulation models
    return ncclSuccess;
}

const char* ncclGetErrorString(int r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclInvalidArgument: return "invalid argument";
        case ncclInvalidUsage: return "invalid usage";
        case ncclRemoteError: return "remote process exited or there was a network error";
        default: return "unhandled error";
    }
}

const char* ncclGetLastError(void*) { return ""; }

int ncclGetUniqueId(UniqueId* id) {
    std::random_device rd;
    for (auto& ch : id->internal) ch = (char) (rd() & 0xff);
    return ncclSuccess;
}

int ncclCommInitRank(Comm** out, int nranks, UniqueId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    CUcontext ctx = emu::current_context();
    if (ctx == nullptr) return 1;  // NCCL needs a current device
    std::string key(id.internal, sizeof id.internal);
    std::shared_ptr<Clique> c;
    {
        std::lock_guard<std::mutex> lock(gMu);
        auto& slot = gCliques[key];
        if (!slot) {
            slot = std::make_shared<Clique>();
            slot->nranks = nranks;
        }
        c = slot;
    }
    if (c->nranks != nranks) return ncclInvalidUsage;
    auto* comm = new Comm();
    comm->clique = c;
    comm->rank = rank;
    int dev = 0;
    cuCtxGetDevice(&dev);
    comm->device = dev;
    std::unique_lock<std::mutex> lock(c->mu);
    c->joined++;
    c->cv.notify_all();
    // NCCL's init blocks until every rank joined (bounded here, so a missing rank fails instead of hanging)
    if (!c->cv.wait_for(lock, std::chrono::seconds(120), [&] { return c->joined >= nranks || c->aborted; })) {
        return ncclSystemError;
    }
    *out = comm;
    return ncclSuccess;
}

// Real NCCL frees the communicator in ncclCommDestroy and ncclCommAbort: a second call on it is a use after
// free that crashes the process inside NCCL (seen on the H200: setCommAbortFlags). The emulation names it
// and aborts the process the same way, so the bug cannot pass here.
static void refuseFreed(const Comm* comm, const char* call) {
    if (comm->destroyed) {
        emu::report(std::string(call) + " on a communicator already destroyed or aborted (a use after free in real NCCL)");
        std::abort();
    }
}

int ncclCommDestroy(Comm* comm) {
    if (comm == nullptr) return ncclInvalidArgument;
    refuseFreed(comm, "ncclCommDestroy");
    comm->destroyed = true;
    return ncclSuccess;
}

int ncclCommAbort(Comm* comm) {
    if (comm == nullptr) return ncclSuccess;
    refuseFreed(comm, "ncclCommAbort");
    {
        std::lock_guard<std::mutex> lock(comm->clique->mu);
        comm->clique->aborted = true;
    }
    comm->clique->cv.notify_all();
    comm->asyncError = ncclRemoteError;
    comm->destroyed = true;
    return ncclSuccess;
}

int ncclCommGetAsyncError(Comm* comm, int* err) {
    if (comm == nullptr) return ncclInvalidArgument;
    refuseFreed(comm, "ncclCommGetAsyncError");
    if (comm->asyncError.load() == ncclSuccess && comm->clique->aborted) comm->asyncError = ncclRemoteError;
    *err = comm->asyncError.load();
    return ncclSuccess;
}

int ncclCommCount(const Comm* comm, int* n) {
    *n = comm->clique->nranks;
    return ncclSuccess;
}
int ncclCommUserRank(const Comm* comm, int* r) {
    *r = comm->rank;
    return ncclSuccess;
}
int ncclCommCuDevice(const Comm* comm, int* d) {
    *d = comm->device;
    return ncclSuccess;
}

int ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* comm, CUstream stream) {
    if (op < opSum || op > opAvg) return ncclInvalidArgument;
    return collective(comm, stream, send, recv, "allReduce", [count, type, op](std::vector<Arrival>& a) {
        size_t b = count * bytesOf(type);
        for (auto& x : a) {
            emu::check_device_range(x.send, b, "ncclAllReduce send buffer");
            emu::check_device_range(x.recv, b, "ncclAllReduce recv buffer");
        }
        std::vector<double> acc(count);
        for (size_t i = 0; i < count; i++) {
            double v = loadD(a[0].send, type, i);
            for (size_t r = 1; r < a.size(); r++) v = reduce(v, loadD(a[r].send, type, i), op);
            acc[i] = op == opAvg ? v / (double) a.size() : v;
        }
        for (auto& x : a)
            for (size_t i = 0; i < count; i++) storeD(x.recv, type, i, acc[i]);
    });
}

int ncclReduceScatter(const void* send, void* recv, size_t recvCount, int type, int op, Comm* comm, CUstream stream) {
    if (op < opSum || op > opAvg) return ncclInvalidArgument;
    return collective(comm, stream, send, recv, "reduceScatter", [recvCount, type, op](std::vector<Arrival>& a) {
        size_t n = a.size();
        for (auto& x : a) {
            emu::check_device_range(x.send, recvCount * n * bytesOf(type), "ncclReduceScatter send buffer");
            emu::check_device_range(x.recv, recvCount * bytesOf(type), "ncclReduceScatter recv buffer");
        }
        std::vector<double> acc(recvCount * n);
        for (size_t i = 0; i < recvCount * n; i++) {
            double v = loadD(a[0].send, type, i);
            for (size_t r = 1; r < n; r++) v = reduce(v, loadD(a[r].send, type, i), op);
            acc[i] = op == opAvg ? v / (double) n : v;
        }
        for (size_t r = 0; r < n; r++)
            for (size_t i = 0; i < recvCount; i++) storeD(a[r].recv, type, i, acc[r * recvCount + i]);
    });
}

int ncclAllGather(const void* send, void* recv, size_t sendCount, int type, Comm* comm, CUstream stream) {
    return collective(comm, stream, send, recv, "allGather", [sendCount, type](std::vector<Arrival>& a) {
        size_t b = sendCount * bytesOf(type);
        for (auto& x : a) {
            emu::check_device_range(x.send, b, "ncclAllGather send buffer");
            emu::check_device_range(x.recv, b * a.size(), "ncclAllGather recv buffer");
        }
        std::vector<unsigned char> all(b * a.size());
        for (size_t r = 0; r < a.size(); r++) std::memcpy(all.data() + r * b, a[r].send, b);
        for (auto& x : a) std::memcpy(x.recv, all.data(), all.size());
    });
}

int ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Comm* comm, CUstream stream) {
    if (comm == nullptr || root < 0 || root >= comm->clique->nranks) return ncclInvalidArgument;
    return collective(comm, stream, send, recv, "broadcast", [count, type, root](std::vector<Arrival>& a) {
        size_t b = count * bytesOf(type);
        emu::check_device_range(a[root].send, b, "ncclBroadcast send buffer");
        std::vector<unsigned char> data(static_cast<const unsigned char*>(a[root].send),
                                        static_cast<const unsigned char*>(a[root].send) + b);
        for (auto& x : a) {
            emu::check_device_range(x.recv, b, "ncclBroadcast recv buffer");
            std::memcpy(x.recv, data.data(), b);
        }
    });
}

int ncclBcast(void* buf, size_t count, int type, int root, Comm* comm, CUstream stream) {
    return ncclBroadcast(buf, buf, count, type, root, comm, stream);
}

int ncclSend(const void* buf, size_t count, int type, int peer, Comm* comm, CUstream stream) {
    return p2p(true, const_cast<void*>(buf), count, type, peer, comm, stream);
}

int ncclRecv(void* buf, size_t count, int type, int peer, Comm* comm, CUstream stream) {
    return p2p(false, buf, count, type, peer, comm, stream);
}

int ncclGroupStart() {
    tlGroupDepth++;
    return ncclSuccess;
}

int ncclGroupEnd() {
    if (tlGroupDepth == 0) return ncclInvalidUsage;
    if (--tlGroupDepth > 0) return ncclSuccess;
    std::vector<PendingP2p> ops;
    ops.swap(tlGroup);
    if (ops.empty()) return ncclSuccess;
    for (const auto& op : ops) {
        if (op.stream != ops[0].stream || op.comm != ops[0].comm) return ncclInvalidUsage;
    }
    return emu::enqueue(ops[0].stream, [ops] { runP2p(ops); }) == CUDA_SUCCESS ? ncclSuccess : 1;
}

}  // extern "C"
