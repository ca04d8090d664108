// Internal interface of the emulated CUDA driver (libcuda.so.1 of cuda-emulation), shared with the
// emulated cuBLASLt and NCCL, which queue their work on the driver's streams.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
struct CUctx_st;
struct CUstream_st;
struct CUevent_st;
struct CUmod_st;
struct CUfunc_st;
typedef CUctx_st* CUcontext;
typedef CUstream_st* CUstream;
typedef CUevent_st* CUevent;
typedef CUmod_st* CUmodule;
typedef CUfunc_st* CUfunction;

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_DEINITIALIZED = 4,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

namespace emu {

/** Thrown by queued work: the stream records it as a sticky error (CUDA_ERROR_LAUNCH_FAILED by default). */
struct Failure : std::runtime_error {
    int code;
    explicit Failure(const std::string& what, int code = CUDA_ERROR_LAUNCH_FAILED) : std::runtime_error(what), code(code) {}
};

/** The context current on the calling thread, or null. */
CUcontext current_context();

/**
 * Queues work on a stream (null = the context's default stream); it runs on the stream's own thread after
 * everything queued before it. Returns the stream's sticky error, if any, without queueing.
 */
CUresult enqueue(CUstream s, std::function<void()> work);

/** True when [p, p + bytes) lies inside one live device allocation. */
bool device_range_ok(const void* p, size_t bytes);

/** Throws Failure naming `what` unless [p, p + bytes) lies inside one live device allocation. */
void check_device_range(const void* p, size_t bytes, const char* what);

/** Prints an emulation message to stderr (prefixed "cuda-emulation:"). */
void report(const std::string& msg);

}  // namespace emu
