// The emulated CUDA driver (libcuda.so.1): devices, primary contexts, streams (each a thread running its
// queue in order) and events; memory.cpp has allocations and copies, modules.cpp images and launches. The
// functions are the driver API's, with the same names (including CUDA's _v2 versions) and C signatures, so
// JCuda's and JavaCPP's JNI libraries bind to them unchanged. Functions not implemented here come from
// generated stubs that return CUDA_ERROR_NOT_SUPPORTED.
//
// Fidelity checks: fresh device memory is filled with NaN bytes; copies and memsets are checked against
// the table of live allocations; memory calls need a current context; a failed kernel is a sticky context
// error (CUDA_ERROR_LAUNCH_FAILED) as on a GPU; pageable host copies behave as CUDA's (synchronous for
// device-to-host); kernels are found only if their name is in the loaded image.
//
// Environment: SPARKATRON_CUDA_EMU_KERNELS (the CPU-compiled kernel module), SPARKATRON_CUDA_EMU_DEVICES
// (device count, default 1), SPARKATRON_CUDA_EMU_MEMORY (bytes per device, default 8 GiB),
// SPARKATRON_CUDA_EMU_LOG (a file that also gets every emulation message).
#include "driver_state.h"

namespace drv {

std::mutex gMu;
bool gInitialized = false;
int gDevices = 1;
size_t gMemoryPerDevice = size_t(8) << 30;
std::vector<std::unique_ptr<CUctx_st>> gPrimary;
std::vector<size_t> gUsed;
std::map<uintptr_t, Allocation> gDeviceAllocs;
std::map<uintptr_t, size_t> gPinned;
void* gKernelModule = nullptr;
thread_local CUctx_st* tlCurrent = nullptr;
static const auto gStart = std::chrono::steady_clock::now();

static void runStream(CUstream_st* s);

double nowMillis() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - gStart).count();
}

void runStream(CUstream_st* s) {
    for (;;) {
        std::function<void()> work;
        {
            std::unique_lock<std::mutex> lock(s->mu);
            s->cv.wait(lock, [s] { return s->stop || !s->queue.empty(); });
            if (s->queue.empty()) {
                return;
            }
            work = std::move(s->queue.front());
            s->queue.pop_front();
        }
        if (s->ctx->error.load() == CUDA_SUCCESS) {
            try {
                work();
            } catch (const emu::Failure& f) {
                emu::report(f.what());
                int expected = CUDA_SUCCESS;
                s->ctx->error.compare_exchange_strong(expected, f.code);
            } catch (const std::exception& e) {
                emu::report(std::string("unexpected failure in queued work: ") + e.what());
                int expected = CUDA_SUCCESS;
                s->ctx->error.compare_exchange_strong(expected, (int) CUDA_ERROR_UNKNOWN);
            }
        }
        {
            std::lock_guard<std::mutex> lock(s->mu);
            s->completed++;
        }
        s->cv.notify_all();
    }
}

CUstream_st* newStream(CUctx_st* ctx) {
    auto* s = new CUstream_st();
    s->ctx = ctx;
    s->worker = std::thread(runStream, s);
    std::lock_guard<std::mutex> lock(ctx->mu);
    ctx->streams.push_back(s);
    return s;
}

CUresult syncStream(CUstream_st* s) {
    std::unique_lock<std::mutex> lock(s->mu);
    s->cv.wait(lock, [s] { return s->completed == s->enqueued; });
    return s->ctx->error.load();
}

CUresult needContext() {
    if (!gInitialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (tlCurrent == nullptr) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    return tlCurrent->error.load();
}

CUstream_st* resolve(CUstream s) {
    if (s == nullptr || s == reinterpret_cast<CUstream>(1) || s == reinterpret_cast<CUstream>(2)) {
        return tlCurrent->defaultStream;
    }
    return s;
}

bool rangeOk(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(gMu);
    auto a = reinterpret_cast<uintptr_t>(p);
    auto it = gDeviceAllocs.upper_bound(a);
    if (it == gDeviceAllocs.begin()) {
        return false;
    }
    --it;
    return a >= it->first && a + bytes <= it->first + it->second.bytes;
}

bool isPinned(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(gMu);
    auto a = reinterpret_cast<uintptr_t>(p);
    auto it = gPinned.upper_bound(a);
    if (it == gPinned.begin()) {
        return false;
    }
    --it;
    return a + bytes <= it->first + it->second;
}

std::string hex(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "%p", p);
    return b;
}


}  // namespace drv

using namespace drv;

namespace emu {

CUcontext current_context() { return tlCurrent; }

CUresult enqueue(CUstream stream, std::function<void()> work) {
    CUstream_st* s = stream;
    if (s == nullptr || s == reinterpret_cast<CUstream>(1) || s == reinterpret_cast<CUstream>(2)) {
        if (tlCurrent == nullptr) {
            return CUDA_ERROR_INVALID_CONTEXT;
        }
        s = tlCurrent->defaultStream;
    }
    CUresult err = s->ctx->error.load();
    if (err != CUDA_SUCCESS) {
        return err;
    }
    {
        std::lock_guard<std::mutex> lock(s->mu);
        s->queue.push_back(std::move(work));
        s->enqueued++;
    }
    s->cv.notify_all();
    return CUDA_SUCCESS;
}

bool device_range_ok(const void* p, size_t bytes) { return rangeOk(p, bytes); }

void check_device_range(const void* p, size_t bytes, const char* what) {
    if (bytes > 0 && !rangeOk(p, bytes)) {
        throw Failure(std::string(what) + ": " + std::to_string(bytes) + " bytes at " + hex(p)
                      + " are outside the live device allocations", CUDA_ERROR_ILLEGAL_ADDRESS);
    }
}

void report(const std::string& msg) {
    std::fprintf(stderr, "cuda-emulation: %s\n", msg.c_str());
    // the test JVM's native stderr may not reach the build log: SPARKATRON_CUDA_EMU_LOG keeps a copy
    if (const char* path = std::getenv("SPARKATRON_CUDA_EMU_LOG")) {
        static std::mutex logMu;
        std::lock_guard<std::mutex> lock(logMu);
        if (FILE* f = std::fopen(path, "a")) {
            std::fprintf(f, "cuda-emulation: %s\n", msg.c_str());
            std::fclose(f);
        }
    }
}

}  // namespace emu

extern "C" {

CUresult cuInit(unsigned flags) {
    if (flags != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::lock_guard<std::mutex> lock(gMu);
    if (!gInitialized) {
        if (const char* d = std::getenv("SPARKATRON_CUDA_EMU_DEVICES")) {
            gDevices = std::max(1, std::atoi(d));
        }
        if (const char* m = std::getenv("SPARKATRON_CUDA_EMU_MEMORY")) {
            gMemoryPerDevice = std::strtoull(m, nullptr, 10);
        }
        for (int i = 0; i < gDevices; i++) {
            auto c = std::make_unique<CUctx_st>();
            c->device = i;
            gPrimary.push_back(std::move(c));
        }
        gUsed.assign(gDevices, 0);
        gInitialized = true;
    }
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
    if (!gInitialized) return CUDA_ERROR_NOT_INITIALIZED;
    *n = gDevices;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!gInitialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= gDevices) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (d < 0 || d >= gDevices) return CUDA_ERROR_INVALID_DEVICE;
    std::snprintf(name, (size_t) len, "Sparkatron emulated CUDA device %d (CPU)", d);
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (d < 0 || d >= gDevices) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = gMemoryPerDevice;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, int attrib, CUdevice d) {
    if (d < 0 || d >= gDevices) return CUDA_ERROR_INVALID_DEVICE;
    switch (attrib) {
        case 1: *v = 1024; return CUDA_SUCCESS;          // max threads per block
        case 2: *v = 1024; return CUDA_SUCCESS;          // max block dim x
        case 5: *v = 2147483647; return CUDA_SUCCESS;    // max grid dim x
        case 8: *v = 48 * 1024; return CUDA_SUCCESS;     // shared memory per block
        case 10: *v = 32; return CUDA_SUCCESS;           // warp size
        case 16: *v = 4; return CUDA_SUCCESS;            // multiprocessors
        case 75: *v = 9; return CUDA_SUCCESS;            // compute capability major
        case 76: *v = 0; return CUDA_SUCCESS;            // minor
        case 97: *v = 227 * 1024; return CUDA_SUCCESS;   // shared memory per block, opt-in
        default: *v = 0; return CUDA_SUCCESS;
    }
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d) {
    if (!gInitialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (d < 0 || d >= gDevices) return CUDA_ERROR_INVALID_DEVICE;
    CUctx_st* c = gPrimary[d].get();
    {
        std::lock_guard<std::mutex> lock(gMu);
        if (c->retained++ == 0 && c->defaultStream == nullptr) {
            c->defaultStream = newStream(c);
        }
    }
    *ctx = c;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (d < 0 || d >= gDevices) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> lock(gMu);
    gPrimary[d]->retained = std::max(0, gPrimary[d]->retained - 1);
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext c) {
    tlCurrent = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = tlCurrent;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* d) {
    if (tlCurrent == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    *d = tlCurrent->device;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() {
    if (tlCurrent == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    std::vector<CUstream_st*> streams;
    {
        std::lock_guard<std::mutex> lock(tlCurrent->mu);
        streams = tlCurrent->streams;
    }
    for (CUstream_st* s : streams) {
        syncStream(s);
    }
    return tlCurrent->error.load();
}

CUresult cuStreamCreate(CUstream* s, unsigned /*flags*/) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    *s = newStream(tlCurrent);
    return CUDA_SUCCESS;
}

CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int /*priority*/) { return cuStreamCreate(s, flags); }

CUresult cuStreamSynchronize(CUstream s) {
    if (!gInitialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (s == nullptr && tlCurrent == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    return syncStream(s == nullptr ? tlCurrent->defaultStream : s);
}

CUresult cuStreamQuery(CUstream s) {
    CUstream_st* st = s == nullptr ? tlCurrent->defaultStream : s;
    std::lock_guard<std::mutex> lock(st->mu);
    if (st->ctx->error.load() != CUDA_SUCCESS) return st->ctx->error.load();
    return st->completed == st->enqueued ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult cuStreamDestroy_v2(CUstream s) {
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    syncStream(s);
    {
        std::lock_guard<std::mutex> lock(s->mu);
        s->stop = true;
    }
    s->cv.notify_all();
    s->worker.join();
    {
        std::lock_guard<std::mutex> lock(s->ctx->mu);
        auto& v = s->ctx->streams;
        v.erase(std::remove(v.begin(), v.end(), s), v.end());
    }
    delete s;
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent* e, unsigned /*flags*/) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    *e = new CUevent_st();
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent e) {
    delete e;
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream stream) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    std::shared_ptr<EventState> st = e->st;
    uint64_t gen;
    {
        std::lock_guard<std::mutex> lock(st->mu);
        gen = ++st->recorded;
    }
    return emu::enqueue(resolve(stream), [st, gen] {
        {
            std::lock_guard<std::mutex> lock(st->mu);
            st->completed = std::max(st->completed, gen);
            st->millis = nowMillis();
        }
        st->cv.notify_all();
    });
}

CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned /*flags*/) { return cuEventRecord(e, s); }

CUresult cuEventQuery(CUevent e) {
    std::lock_guard<std::mutex> lock(e->st->mu);
    return e->st->completed >= e->st->recorded ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult cuEventSynchronize(CUevent e) {
    std::shared_ptr<EventState> st = e->st;
    std::unique_lock<std::mutex> lock(st->mu);
    uint64_t target = st->recorded;
    st->cv.wait(lock, [&st, target] { return st->completed >= target; });
    return tlCurrent != nullptr ? tlCurrent->error.load() : CUDA_SUCCESS;
}

CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    if (cuEventQuery(start) != CUDA_SUCCESS || cuEventQuery(end) != CUDA_SUCCESS) return CUDA_ERROR_NOT_READY;
    *ms = (float) (end->st->millis - start->st->millis);
    return CUDA_SUCCESS;
}

CUresult cuStreamWaitEvent(CUstream stream, CUevent e, unsigned /*flags*/) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    std::shared_ptr<EventState> st = e->st;
    uint64_t target;
    {
        std::lock_guard<std::mutex> lock(st->mu);
        target = st->recorded;
    }
    return emu::enqueue(resolve(stream), [st, target] {
        std::unique_lock<std::mutex> lock(st->mu);
        st->cv.wait(lock, [&st, target] { return st->completed >= target; });
    });
}

}  // extern "C"
