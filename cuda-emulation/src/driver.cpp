// The emulated CUDA driver (libcuda.so.1): devices, primary contexts, device and pinned memory, streams
// (each a thread running its queue in order), events, modules and kernel launches. The functions are the
// driver API's, with the same names (including CUDA's _v2 versions) and C signatures, so JCuda's and
// JavaCPP's JNI libraries bind to them unchanged. Functions not implemented here come from generated stubs
// that return CUDA_ERROR_NOT_SUPPORTED.
//
// Fidelity checks: fresh device memory is filled with NaN bytes; copies and memsets are checked against
// the table of live allocations; memory calls need a current context; a failed kernel is a sticky context
// error (CUDA_ERROR_LAUNCH_FAILED) as on a GPU; pageable host copies behave as CUDA's (synchronous for
// device-to-host); kernels are found only if their name is in the loaded image.
//
// Environment: SPARKATRON_CUDA_EMU_KERNELS (the CPU-compiled kernel module), SPARKATRON_CUDA_EMU_DEVICES
// (device count, default 1), SPARKATRON_CUDA_EMU_MEMORY (bytes per device, default 8 GiB),
// SPARKATRON_CUDA_EMU_LOG (a file that also gets every emulation message).
#include "emu_runtime.h"
#include "kernel_entry.h"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct CUctx_st;

struct CUstream_st {
    CUctx_st* ctx = nullptr;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void()>> queue;
    uint64_t enqueued = 0;
    uint64_t completed = 0;
    bool stop = false;
    std::thread worker;
};

struct CUctx_st {
    int device = 0;
    int retained = 0;
    std::atomic<int> error{CUDA_SUCCESS};
    std::mutex mu;
    std::vector<CUstream_st*> streams;
    CUstream_st* defaultStream = nullptr;
};

struct EventState {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t recorded = 0;
    uint64_t completed = 0;
    double millis = 0;
};

// Queued work holds the state, not the handle: as in CUDA, an event destroyed while a record or wait of it
// is still queued lives until that work is done.
struct CUevent_st {
    std::shared_ptr<EventState> st = std::make_shared<EventState>();
};

struct CUmod_st {
    std::string image;
    const emu::KernelEntry* table = nullptr;
    int count = 0;
};

struct CUfunc_st {
    const emu::KernelEntry* entry;
    int maxDynamicSmem = 48 * 1024;
};

namespace {

struct Allocation {
    size_t bytes;
    int device;
};

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
const auto gStart = std::chrono::steady_clock::now();

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

enum Kind { H2D, D2H, D2D };

CUresult copy(void* dst, const void* src, size_t bytes, Kind kind, CUstream stream, bool async) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) {
        return r;
    }
    if (bytes == 0) {
        return CUDA_SUCCESS;
    }
    if ((kind != H2D && !rangeOk(src, bytes)) || (kind != D2H && !rangeOk(dst, bytes))) {
        emu::report("memcpy of " + std::to_string(bytes) + " bytes from " + hex(src) + " to " + hex(dst)
                    + " is outside the live device allocations");
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUstream_st* s = resolve(stream);
    if (kind == H2D && !(async && isPinned(src, bytes))) {
        // pageable source (or a synchronous call): CUDA stages it before returning
        auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*) src, (const unsigned char*) src + bytes);
        r = emu::enqueue(s, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
    } else {
        r = emu::enqueue(s, [dst, src, bytes] { std::memcpy(dst, src, bytes); });
    }
    if (r != CUDA_SUCCESS) {
        return r;
    }
    bool sync = !async || (kind == D2H && !isPinned(dst, bytes));
    return sync ? syncStream(s) : CUDA_SUCCESS;
}

template <class T>
CUresult memset(CUdeviceptr dst, T value, size_t n, CUstream stream, bool async) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) {
        return r;
    }
    void* p = reinterpret_cast<void*>(dst);
    if (n > 0 && !rangeOk(p, n * sizeof(T))) {
        emu::report("memset of " + std::to_string(n * sizeof(T)) + " bytes at " + hex(p) + " is outside the live device allocations");
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUstream_st* s = resolve(stream);
    r = emu::enqueue(s, [p, value, n] {
        T* t = static_cast<T*>(p);
        for (size_t i = 0; i < n; i++) {
            t[i] = value;
        }
    });
    return r != CUDA_SUCCESS || async ? r : syncStream(s);
}

size_t imageSize(const unsigned char* b) {
    uint32_t magic;
    std::memcpy(&magic, b, 4);
    if (magic == 0xBA55ED50u) {  // fatbin: u32 magic, u16 version, u16 header size, u64 payload size
        uint16_t header;
        uint64_t payload;
        std::memcpy(&header, b + 6, 2);
        std::memcpy(&payload, b + 8, 8);
        return header + payload;
    }
    if (std::memcmp(b, "\x7f" "ELF", 4) == 0) {  // cubin: section headers end the file
        uint64_t shoff;
        uint16_t shentsize, shnum;
        std::memcpy(&shoff, b + 0x28, 8);
        std::memcpy(&shentsize, b + 0x3a, 2);
        std::memcpy(&shnum, b + 0x3c, 2);
        return shoff + (size_t) shentsize * shnum;
    }
    return std::strlen(reinterpret_cast<const char*>(b));  // PTX text
}

bool imageNames(const std::string& image, const char* name) {
    size_t len = std::strlen(name);
    for (size_t at = image.find(name); at != std::string::npos; at = image.find(name, at + 1)) {
        char next = at + len < image.size() ? image[at + len] : '\0';
        char prev = at > 0 ? image[at - 1] : '\0';
        bool ident = std::isalnum((unsigned char) next) || next == '_';
        bool identPrev = std::isalnum((unsigned char) prev) || prev == '_';
        if (!ident && !identPrev) {
            return true;
        }
    }
    return false;
}

}  // namespace

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

CUresult cuMemGetInfo_v2(size_t* freeBytes, size_t* total) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    std::lock_guard<std::mutex> lock(gMu);
    *total = gMemoryPerDevice;
    *freeBytes = gMemoryPerDevice - gUsed[tlCurrent->device];
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    size_t rounded = (bytes + 255) / 256 * 256;
    int dev = tlCurrent->device;
    {
        std::lock_guard<std::mutex> lock(gMu);
        if (gUsed[dev] + rounded > gMemoryPerDevice) {
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        gUsed[dev] += rounded;
    }
    void* m = std::aligned_alloc(256, rounded);
    if (m == nullptr) {
        std::lock_guard<std::mutex> lock(gMu);
        gUsed[dev] -= rounded;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    std::memset(m, 0xff, rounded);  // NaN in every float format: reads of unwritten memory show
    std::lock_guard<std::mutex> lock(gMu);
    gDeviceAllocs[reinterpret_cast<uintptr_t>(m)] = Allocation{bytes, dev};
    *p = reinterpret_cast<CUdeviceptr>(m);
    return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    if (!gInitialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (p == 0) return CUDA_SUCCESS;
    // cuMemFree synchronises with the device, as the real call does
    if (tlCurrent != nullptr) cuCtxSynchronize();
    std::lock_guard<std::mutex> lock(gMu);
    auto it = gDeviceAllocs.find((uintptr_t) p);
    if (it == gDeviceAllocs.end()) {
        emu::report("cuMemFree of " + hex(reinterpret_cast<void*>(p)) + ", which is not the start of a live allocation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    gUsed[it->second.device] -= (it->second.bytes + 255) / 256 * 256;
    gDeviceAllocs.erase(it);
    std::free(reinterpret_cast<void*>(p));
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned /*flags*/) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    void* m = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (m == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
    std::lock_guard<std::mutex> lock(gMu);
    gPinned[reinterpret_cast<uintptr_t>(m)] = bytes;
    *p = m;
    return CUDA_SUCCESS;
}

CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }

CUresult cuMemFreeHost(void* p) {
    std::lock_guard<std::mutex> lock(gMu);
    if (gPinned.erase(reinterpret_cast<uintptr_t>(p)) == 0) return CUDA_ERROR_INVALID_VALUE;
    std::free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return copy((void*) d, h, n, H2D, nullptr, false); }
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return copy(h, (void*) d, n, D2H, nullptr, false); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return copy((void*) d, (void*) s, n, D2D, nullptr, false); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, CUstream s) { return copy((void*) d, h, n, H2D, s, true); }
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, CUstream s) { return copy(h, (void*) d, n, D2H, s, true); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s2, size_t n, CUstream s) { return copy((void*) d, (void*) s2, n, D2D, s, true); }

struct CUDA_MEMCPY2D {
    size_t srcXInBytes, srcY;
    int srcMemoryType;
    const void* srcHost;
    CUdeviceptr srcDevice;
    void* srcArray;
    size_t srcPitch;
    size_t dstXInBytes, dstY;
    int dstMemoryType;
    void* dstHost;
    CUdeviceptr dstDevice;
    void* dstArray;
    size_t dstPitch;
    size_t WidthInBytes, Height;
};

CUresult cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D* c, CUstream stream) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    if (c->WidthInBytes == 0 || c->Height == 0) return CUDA_SUCCESS;
    if (c->srcMemoryType != 2 || c->dstMemoryType != 2 || c->WidthInBytes > c->srcPitch || c->WidthInBytes > c->dstPitch) {
        return CUDA_ERROR_INVALID_VALUE;  // only device-to-device 2D copies are used (and emulated)
    }
    const char* src = reinterpret_cast<const char*>(c->srcDevice) + c->srcY * c->srcPitch + c->srcXInBytes;
    char* dst = reinterpret_cast<char*>(c->dstDevice) + c->dstY * c->dstPitch + c->dstXInBytes;
    size_t srcSpan = (c->Height - 1) * c->srcPitch + c->WidthInBytes;
    size_t dstSpan = (c->Height - 1) * c->dstPitch + c->WidthInBytes;
    if (!rangeOk(src, srcSpan) || !rangeOk(dst, dstSpan)) {
        emu::report("2D copy outside the live device allocations");
        return CUDA_ERROR_INVALID_VALUE;
    }
    size_t w = c->WidthInBytes, h = c->Height, sp = c->srcPitch, dp = c->dstPitch;
    return emu::enqueue(resolve(stream), [=] {
        for (size_t i = 0; i < h; i++) std::memmove(dst + i * dp, src + i * sp, w);
    });
}

CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D* c) {
    CUresult r = cuMemcpy2DAsync_v2(c, nullptr);
    return r != CUDA_SUCCESS ? r : syncStream(tlCurrent->defaultStream);
}

CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset<unsigned char>(d, v, n, nullptr, false); }
CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset<unsigned short>(d, v, n, nullptr, false); }
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) { return memset<unsigned>(d, v, n, nullptr, false); }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset<unsigned char>(d, v, n, s, true); }
CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { return memset<unsigned short>(d, v, n, s, true); }
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, CUstream s) { return memset<unsigned>(d, v, n, s, true); }

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

CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    const char* path = std::getenv("SPARKATRON_CUDA_EMU_KERNELS");
    if (path == nullptr) {
        emu::report("SPARKATRON_CUDA_EMU_KERNELS is not set: no CPU-compiled kernel module to stand in for the image");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    std::lock_guard<std::mutex> lock(gMu);
    if (gKernelModule == nullptr) {
        gKernelModule = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (gKernelModule == nullptr) {
            emu::report(std::string("cannot load the CPU kernel module: ") + dlerror());
            return CUDA_ERROR_INVALID_IMAGE;
        }
    }
    auto* table = static_cast<const emu::KernelEntry*>(dlsym(gKernelModule, "sparkatron_emu_kernels"));
    auto* count = static_cast<const int*>(dlsym(gKernelModule, "sparkatron_emu_kernel_count"));
    if (table == nullptr || count == nullptr) {
        emu::report(std::string(path) + " has no sparkatron_emu_kernels table");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    const auto* bytes = static_cast<const unsigned char*>(image);
    auto* mod = new CUmod_st();
    mod->image.assign(reinterpret_cast<const char*>(bytes), imageSize(bytes));
    mod->table = table;
    mod->count = *count;
    *m = mod;
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmodule* m, const void* image, unsigned, void*, void**) { return cuModuleLoadData(m, image); }

CUresult cuModuleUnload(CUmodule m) {
    delete m;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    if (m == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (!imageNames(m->image, name)) {
        return CUDA_ERROR_NOT_FOUND;  // as on a GPU: the image lacks the kernel
    }
    for (int i = 0; i < m->count; i++) {
        if (std::strcmp(m->table[i].name, name) == 0) {
            *f = new CUfunc_st{&m->table[i]};
            return CUDA_SUCCESS;
        }
    }
    emu::report(std::string("kernel ") + name + " is in the image but not in the CPU kernel module");
    return CUDA_ERROR_NOT_FOUND;
}

CUresult cuFuncSetAttribute(CUfunction f, int attrib, int value) {
    if (attrib == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
        f->maxDynamicSmem = value;
        return CUDA_SUCCESS;
    }
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream stream, void** params, void** extra) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    if (extra != nullptr || (f->entry->nargs > 0 && params == nullptr)) return CUDA_ERROR_INVALID_VALUE;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || gy > 65535 || gz > 65535) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((size_t) bx * by * bz > 1024 || bz > 64) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((int) smem > f->maxDynamicSmem) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // copy the parameter values now: the caller may reuse its memory as soon as the launch returns
    const emu::KernelEntry* e = f->entry;
    auto buf = std::make_shared<std::vector<std::max_align_t>>();
    std::vector<size_t> offsets;
    size_t total = 0;
    for (int i = 0; i < e->nargs; i++) {
        offsets.push_back(total);
        total += (e->sizes[i] + 15) / 16 * 16;
    }
    buf->resize(total / sizeof(std::max_align_t) + 1);
    auto* base = reinterpret_cast<unsigned char*>(buf->data());
    for (int i = 0; i < e->nargs; i++) {
        std::memcpy(base + offsets[i], params[i], e->sizes[i]);
    }
    dim3 grid{gx, gy, gz}, block{bx, by, bz};
    return emu::enqueue(resolve(stream), [e, buf, offsets, grid, block, smem] {
        std::vector<void*> args;
        auto* b = reinterpret_cast<unsigned char*>(buf->data());
        for (size_t off : offsets) args.push_back(b + off);
        emu::run_grid(e, grid, block, smem, args.data());
    });
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case CUDA_ERROR_INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

}  // extern "C"
