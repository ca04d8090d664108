// Force-included (g++ -include cuda_emu.h) when a .cu kernel file is compiled for the CPU emulation.
// It maps the CUDA C++ dialect our kernels use onto plain C++: execution-space qualifiers disappear,
// __shared__ becomes per-block storage (a block owns its OS thread, so thread_local is per block),
// threadIdx/blockIdx come from the running fiber, and barriers, shuffles and votes call into the
// emulated driver (libcuda.so.1 of cuda-emulation), which runs each CUDA thread as a fiber.
//
// Test support only: nothing here ships. The same .cu sources compile with nvcc for real GPUs.
#pragma once
#ifndef SPARKATRON_CUDA_EMU
#define SPARKATRON_CUDA_EMU 1
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>

#include "sparkatron_emu_halfbits.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define __constant__ static const

#ifndef SPARKATRON_EMU_DIM3
#define SPARKATRON_EMU_DIM3
struct dim3 {
    unsigned x, y, z;
};
#endif

extern "C" {
// Provided by the emulated libcuda.so.1 (cuda-emulation/src/fiber.cpp).
const dim3* sparkatron_emu_thread_idx(void);
const dim3* sparkatron_emu_block_idx(void);
const dim3* sparkatron_emu_block_dim(void);
const dim3* sparkatron_emu_grid_dim(void);
void* sparkatron_emu_dynamic_smem(void);
void sparkatron_emu_syncthreads(void);
void sparkatron_emu_syncwarp(void);
uint64_t sparkatron_emu_shfl(uint64_t bits, int srcLane, int width);
uint32_t sparkatron_emu_ballot(int predicate);
void sparkatron_emu_trap(const char* why);
}

#define threadIdx (*sparkatron_emu_thread_idx())
#define blockIdx (*sparkatron_emu_block_idx())
#define blockDim (*sparkatron_emu_block_dim())
#define gridDim (*sparkatron_emu_grid_dim())
#define warpSize 32
#define __syncthreads() sparkatron_emu_syncthreads()
#define __syncwarp(...) sparkatron_emu_syncwarp()
#define __trap() sparkatron_emu_trap("__trap()")
// A kernel's dynamically sized shared memory (the launch's sharedMemBytes).
#define SPARKATRON_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(sparkatron_emu_dynamic_smem())

template <class T>
inline uint64_t sparkatron_emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

template <class T>
inline T sparkatron_emu_from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

inline unsigned sparkatron_emu_lane() {
    const dim3& t = threadIdx;
    const dim3& d = blockDim;
    return (t.x + d.x * (t.y + d.y * t.z)) % 32u;
}

template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    unsigned lane = sparkatron_emu_lane();
    int base = (int) (lane / width) * width;
    return sparkatron_emu_from_bits<T>(sparkatron_emu_shfl(sparkatron_emu_bits(v), base + (src % width), width));
}

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int laneMask, int width = 32) {
    unsigned lane = sparkatron_emu_lane();
    int src = (int) (lane ^ (unsigned) laneMask);
    if (src / width != (int) lane / width) {
        src = (int) lane;
    }
    return sparkatron_emu_from_bits<T>(sparkatron_emu_shfl(sparkatron_emu_bits(v), src, width));
}

template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    unsigned lane = sparkatron_emu_lane();
    int src = (int) (lane + delta);
    if (src / width != (int) lane / width) {
        src = (int) lane;
    }
    return sparkatron_emu_from_bits<T>(sparkatron_emu_shfl(sparkatron_emu_bits(v), src, width));
}

template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    unsigned lane = sparkatron_emu_lane();
    int src = (int) lane - (int) delta;
    if (src < 0 || src / width != (int) lane / width) {
        src = (int) lane;
    }
    return sparkatron_emu_from_bits<T>(sparkatron_emu_shfl(sparkatron_emu_bits(v), src, width));
}

inline unsigned __ballot_sync(unsigned, int p) { return sparkatron_emu_ballot(p); }
inline int __any_sync(unsigned, int p) { return sparkatron_emu_ballot(p) != 0; }
inline int __all_sync(unsigned, int p) { return sparkatron_emu_ballot(!p) == 0; }

// ---- atomics: blocks of different streams run on different OS threads, so these are real atomics ----

template <class T>
inline T sparkatron_emu_atomic_update(T* a, T (*f)(T, T), T v) {
    T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(a, &old, f(old, v), false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline float atomicAdd(float* a, float v) {
    static_assert(sizeof(float) == sizeof(uint32_t), "float size");
    uint32_t* bits = reinterpret_cast<uint32_t*>(a);
    uint32_t old = __atomic_load_n(bits, __ATOMIC_SEQ_CST), next;
    do {
        float f;
        std::memcpy(&f, &old, 4);
        f += v;
        std::memcpy(&next, &f, 4);
    } while (!__atomic_compare_exchange_n(bits, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    float r;
    std::memcpy(&r, &old, 4);
    return r;
}
inline double atomicAdd(double* a, double v) {
    uint64_t* bits = reinterpret_cast<uint64_t*>(a);
    uint64_t old = __atomic_load_n(bits, __ATOMIC_SEQ_CST), next;
    do {
        double f;
        std::memcpy(&f, &old, 8);
        f += v;
        std::memcpy(&next, &f, 8);
    } while (!__atomic_compare_exchange_n(bits, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    double r;
    std::memcpy(&r, &old, 8);
    return r;
}
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline int atomicMax(int* a, int v) {
    return sparkatron_emu_atomic_update<int>(a, [](int x, int y) { return x > y ? x : y; }, v);
}
inline int atomicMin(int* a, int v) {
    return sparkatron_emu_atomic_update<int>(a, [](int x, int y) { return x < y ? x : y; }, v);
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
inline int atomicCAS(int* a, int expected, int desired) {
    __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long expected, unsigned long long desired) {
    __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- math intrinsics (CPU libm; the GPU's ulp errors differ, which tests' tolerances allow for) ----

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
template <class T>
inline T __ldg(const T* p) { return *p; }
using std::exp; using std::log; using std::sqrt; using std::tanh; using std::fabs; using std::fmax; using std::fmin;
using std::isnan; using std::isinf;

// ---- bfloat16 and half as plain 16-bit structs, converted with round-to-nearest-even ----

struct __nv_bfloat16 {
    uint16_t x;
};
struct __half {
    uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h) { return sparkatron_bf16_to_float(h.x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16{sparkatron_float_to_bf16(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __half2float(__half h) { return sparkatron_half_to_float(h.x); }
inline __half __float2half_rn(float f) { return __half{sparkatron_float_to_half(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
