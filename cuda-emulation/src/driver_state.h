// Internal state of the emulated CUDA driver, shared by its parts: driver.cpp (devices, contexts, streams,
// events), memory.cpp (allocations, copies, memsets) and modules.cpp (images, kernels, launches).
#pragma once
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


extern "C" CUresult cuCtxSynchronize();

namespace drv {

struct Allocation {
    size_t bytes;
    int device;
};

extern std::mutex gMu;
extern bool gInitialized;
extern int gDevices;
extern size_t gMemoryPerDevice;
extern std::vector<std::unique_ptr<CUctx_st>> gPrimary;
extern std::vector<size_t> gUsed;
extern std::map<uintptr_t, Allocation> gDeviceAllocs;
extern std::map<uintptr_t, size_t> gPinned;
extern void* gKernelModule;
extern thread_local CUctx_st* tlCurrent;

double nowMillis();
CUstream_st* newStream(CUctx_st* ctx);
/** Waits until everything queued on s ran; returns the context's sticky error. */
CUresult syncStream(CUstream_st* s);
/** CUDA_SUCCESS when initialised with a current, healthy context. */
CUresult needContext();
/** The stream a handle names (null and the legacy/per-thread handles: the context's default stream). */
CUstream_st* resolve(CUstream s);
bool rangeOk(const void* p, size_t bytes);
bool isPinned(const void* p, size_t bytes);
std::string hex(const void* p);

}  // namespace drv
