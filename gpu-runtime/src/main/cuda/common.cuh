// Shared by every kernel file: 16-bit types, loads/stores that compute in fp32 whatever the storage type,
// and block reductions. Compiled by nvcc for GPUs and by g++ (with cuda-emulation's force-included
// cuda_emu.h) for the CPU emulation, so only the CUDA subset both understand is used here.
#pragma once
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define SPARKATRON_DYNAMIC_SHARED(type, name) \
    extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    type* name = reinterpret_cast<type*>(name##_bytes)
#endif

typedef __nv_bfloat16 bf16;
typedef __half f16;

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ld(f16 v) { return __half2float(v); }

template <class T> __device__ __forceinline__ T st(float v);
template <> __device__ __forceinline__ float st<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 st<bf16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ f16 st<f16>(float v) { return __float2half_rn(v); }

/** Sum over the 32 lanes of a warp; every lane gets the total. */
__device__ __forceinline__ float warpSum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warpSumD(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warpMax(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/**
 * Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total. `scratch`
 * is 32 floats of shared memory; the call begins and ends with a barrier, so it may be called repeatedly.
 */
__device__ __forceinline__ float blockSum(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warpSum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warpSum(v);
}

__device__ __forceinline__ double blockSumD(double v, double* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warpSumD(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
    return warpSumD(v);
}

__device__ __forceinline__ float blockMax(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warpMax(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warpMax(v);
}

/** A grid-stride loop over [0, n). */
#define GRID_STRIDE(i, n) \
    for (long long i = (long long) blockIdx.x * blockDim.x + threadIdx.x; i < (long long) (n); \
         i += (long long) blockDim.x * gridDim.x)
