// Elementwise kernels: fill, scale, add, GELU (tanh approximation), SwiGLU, casts.
#include "common.cuh"

template <class T>
__device__ void fillImpl(T* x, float v, long long n) {
    GRID_STRIDE(i, n) x[i] = st<T>(v);
}
extern "C" __global__ void fill_f32(float* x, float v, long long n) { fillImpl(x, v, n); }
extern "C" __global__ void fill_bf16(bf16* x, float v, long long n) { fillImpl(x, v, n); }

extern "C" __global__ void scale_f32(float* x, float factor, long long n) {
    GRID_STRIDE(i, n) x[i] *= factor;
}

template <class T>
__device__ void addImpl(T* out, const T* a, const T* b, long long n) {
    GRID_STRIDE(i, n) out[i] = st<T>(ld(a[i]) + ld(b[i]));
}
extern "C" __global__ void add_f32(float* out, const float* a, const float* b, long long n) { addImpl(out, a, b, n); }
extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, long long n) { addImpl(out, a, b, n); }
