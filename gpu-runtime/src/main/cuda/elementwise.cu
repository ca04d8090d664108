// Elementwise kernels: fill, scale, add, bias add, GELU (tanh approximation), SwiGLU, 16-bit rounding and
// dropout. Activations may be f32, bf16 or f16 (suffix); arithmetic is fp32. Grid-stride loops: any grid.
#include "common.cuh"

extern "C" __global__ void fill_f32(float* x, float v, long long n) {
    GRID_STRIDE(i, n) x[i] = v;
}

extern "C" __global__ void scale_f32(float* x, float factor, long long n) {
    GRID_STRIDE(i, n) x[i] *= factor;
}

template <class T>
__device__ void addImpl(T* out, const T* a, const T* b, long long n) {
    GRID_STRIDE(i, n) out[i] = st<T>(ld(a[i]) + ld(b[i]));
}
extern "C" __global__ void add_f32(float* out, const float* a, const float* b, long long n) { addImpl(out, a, b, n); }
extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, long long n) { addImpl(out, a, b, n); }
extern "C" __global__ void add_f16(f16* out, const f16* a, const f16* b, long long n) { addImpl(out, a, b, n); }

/** out[r, j] += bias[j]. */
template <class T>
__device__ void addBiasImpl(T* out, const T* bias, long long rows, int cols) {
    GRID_STRIDE(i, rows * cols) out[i] = st<T>(ld(out[i]) + ld(bias[i % cols]));
}
extern "C" __global__ void add_bias_f32(float* out, const float* bias, long long rows, int cols) { addBiasImpl(out, bias, rows, cols); }
extern "C" __global__ void add_bias_bf16(bf16* out, const bf16* bias, long long rows, int cols) { addBiasImpl(out, bias, rows, cols); }

#define GELU_SCALE 0.7978845608028654f  /* sqrt(2 / pi) */

template <class T>
__device__ void geluForwardImpl(T* out, const T* x, long long n) {
    GRID_STRIDE(i, n) {
        float v = ld(x[i]);
        float u = GELU_SCALE * (v + 0.044715f * v * v * v);
        out[i] = st<T>(0.5f * v * (1.f + tanhf(u)));
    }
}
extern "C" __global__ void gelu_forward_f32(float* out, const float* x, long long n) { geluForwardImpl(out, x, n); }
extern "C" __global__ void gelu_forward_bf16(bf16* out, const bf16* x, long long n) { geluForwardImpl(out, x, n); }

template <class T>
__device__ void geluBackwardImpl(T* dx, const T* dout, const T* x, long long n) {
    GRID_STRIDE(i, n) {
        float v = ld(x[i]);
        float u = GELU_SCALE * (v + 0.044715f * v * v * v);
        float th = tanhf(u);
        float sech2 = 1.f - th * th;
        float grad = 0.5f * (1.f + th) + 0.5f * v * sech2 * GELU_SCALE * (1.f + 3.f * 0.044715f * v * v);
        dx[i] = st<T>(grad * ld(dout[i]));
    }
}
extern "C" __global__ void gelu_backward_f32(float* dx, const float* dout, const float* x, long long n) { geluBackwardImpl(dx, dout, x, n); }
extern "C" __global__ void gelu_backward_bf16(bf16* dx, const bf16* dout, const bf16* x, long long n) { geluBackwardImpl(dx, dout, x, n); }

/** out[r, j] = silu(gateUp[r, j]) * gateUp[r, f + j]. */
template <class T>
__device__ void swigluForwardImpl(T* out, const T* gu, long long n, int f) {
    GRID_STRIDE(i, n * f) {
        long long r = i / f, j = i % f;
        float g = ld(gu[r * 2 * f + j]);
        float silu = g / (1.f + expf(-g));
        out[i] = st<T>(silu * ld(gu[r * 2 * f + f + j]));
    }
}
extern "C" __global__ void swiglu_forward_f32(float* out, const float* gu, long long n, int f) { swigluForwardImpl(out, gu, n, f); }
extern "C" __global__ void swiglu_forward_bf16(bf16* out, const bf16* gu, long long n, int f) { swigluForwardImpl(out, gu, n, f); }

template <class T>
__device__ void swigluBackwardImpl(T* dgu, const T* dout, const T* gu, long long n, int f) {
    GRID_STRIDE(i, n * f) {
        long long r = i / f, j = i % f;
        float g = ld(gu[r * 2 * f + j]);
        float u = ld(gu[r * 2 * f + f + j]);
        float sig = 1.f / (1.f + expf(-g));
        float dy = ld(dout[i]);
        dgu[r * 2 * f + j] = st<T>(dy * u * sig * (1.f + g * (1.f - sig)));
        dgu[r * 2 * f + f + j] = st<T>(dy * g * sig);
    }
}
extern "C" __global__ void swiglu_backward_f32(float* dgu, const float* dout, const float* gu, long long n, int f) { swigluBackwardImpl(dgu, dout, gu, n, f); }
extern "C" __global__ void swiglu_backward_bf16(bf16* dgu, const bf16* dout, const bf16* gu, long long n, int f) { swigluBackwardImpl(dgu, dout, gu, n, f); }

// ---- rounding to 16-bit formats: into 16-bit storage, or into f32 holding the rounded values ----

extern "C" __global__ void round_f32_to_bf16(bf16* dst, const float* src, long long n) {
    GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}
extern "C" __global__ void round_f32_to_f16(f16* dst, const float* src, long long n) {
    GRID_STRIDE(i, n) dst[i] = __float2half_rn(src[i]);
}
extern "C" __global__ void round_f32_as_bf16(float* dst, const float* src, long long n) {
    GRID_STRIDE(i, n) dst[i] = __bfloat162float(__float2bfloat16_rn(src[i]));
}
extern "C" __global__ void round_f32_as_f16(float* dst, const float* src, long long n) {
    GRID_STRIDE(i, n) dst[i] = __half2float(__float2half_rn(src[i]));
}
extern "C" __global__ void widen_bf16_to_f32(float* dst, const bf16* src, long long n) {
    GRID_STRIDE(i, n) dst[i] = __bfloat162float(src[i]);
}
extern "C" __global__ void widen_f16_to_f32(float* dst, const f16* src, long long n) {
    GRID_STRIDE(i, n) dst[i] = __half2float(src[i]);
}

// ---- dropout: the counter-based mask of org.sparkatron.parallel.DropoutRng, bit for bit ----

__device__ __forceinline__ unsigned long long splitmix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <class T>
__device__ void dropoutImpl(T* x, float p, unsigned long long base, long long firstRow, long long rows, int cols) {
    float scale = 1.f / (1.f - p);
    GRID_STRIDE(i, rows * cols) {
        long long r = i / cols, j = i % cols;
        unsigned long long index = (unsigned long long) ((firstRow + r) * cols + j);
        unsigned long long h = splitmix(base + index * 0x9E3779B97F4A7C15ull);
        // (h >>> 40) * 2^-24 as a float, compared with p: exact, as in Java
        bool keep = (float) (h >> 40) * 5.9604644775390625e-8f >= p;
        x[i] = keep ? st<T>(ld(x[i]) * scale) : st<T>(0.f);
    }
}
extern "C" __global__ void dropout_f32(float* x, float p, unsigned long long base, long long firstRow, long long rows, int cols) {
    dropoutImpl(x, p, base, firstRow, rows, cols);
}
extern "C" __global__ void dropout_bf16(bf16* x, float p, unsigned long long base, long long firstRow, long long rows, int cols) {
    dropoutImpl(x, p, base, firstRow, rows, cols);
}
