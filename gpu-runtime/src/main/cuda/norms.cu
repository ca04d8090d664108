// LayerNorm and RMSNorm, forward and backward. One block per row (blockDim.x a multiple of 32); row
// statistics reduce in fp32 over the block. Backward writes dx and per-block partial column sums of dw (and
// db) into a [gridDim.x, C] scratch; norm_grad_reduce then adds the partials to dw in block order, so the
// gradients are deterministic (no atomics) and accumulate (dw += ...) as the Kernels contract says.
#include "common.cuh"

template <class T>
__device__ void layerNormForwardImpl(T* out, float* mean, float* rstd, const T* x, const float* w, const float* b,
                                     long long n, int c, float eps) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < n; r += gridDim.x) {
        const T* xr = x + r * c;
        float s = 0.f;
        for (int j = threadIdx.x; j < c; j += blockDim.x) s += ld(xr[j]);
        float m = blockSum(s, scratch) / c;
        float v = 0.f;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float d = ld(xr[j]) - m;
            v += d * d;
        }
        float rs = rsqrtf(blockSum(v, scratch) / c + eps);
        for (int j = threadIdx.x; j < c; j += blockDim.x) out[r * c + j] = st<T>((ld(xr[j]) - m) * rs * w[j] + b[j]);
        if (threadIdx.x == 0) {
            mean[r] = m;
            rstd[r] = rs;
        }
    }
}
extern "C" __global__ void layernorm_forward_f32(float* out, float* mean, float* rstd, const float* x, const float* w,
                                                 const float* b, long long n, int c, float eps) {
    layerNormForwardImpl(out, mean, rstd, x, w, b, n, c, eps);
}
extern "C" __global__ void layernorm_forward_bf16(bf16* out, float* mean, float* rstd, const bf16* x, const float* w,
                                                  const float* b, long long n, int c, float eps) {
    layerNormForwardImpl(out, mean, rstd, x, w, b, n, c, eps);
}

/** dx += rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)); partial dw, db per block. */
template <class T>
__device__ void layerNormBackwardImpl(T* dx, float* partialW, float* partialB, const T* dout, const T* x, const float* w,
                                      const float* mean, const float* rstd, long long n, int c) {
    __shared__ float scratch[32];
    float* pw = partialW + (long long) blockIdx.x * c;
    float* pb = partialB + (long long) blockIdx.x * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        pw[j] = 0.f;
        pb[j] = 0.f;
    }
    for (long long r = blockIdx.x; r < n; r += gridDim.x) {
        float m = mean[r], s = rstd[r];
        float a = 0.f, bc = 0.f;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float xhat = (ld(x[r * c + j]) - m) * s;
            float d = ld(dout[r * c + j]);
            float dnorm = d * w[j];
            a += dnorm;
            bc += dnorm * xhat;
            pw[j] += d * xhat;
            pb[j] += d;
        }
        a = blockSum(a, scratch) / c;
        bc = blockSum(bc, scratch) / c;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float xhat = (ld(x[r * c + j]) - m) * s;
            float dnorm = ld(dout[r * c + j]) * w[j];
            dx[r * c + j] = st<T>(ld(dx[r * c + j]) + s * (dnorm - a - xhat * bc));
        }
    }
}
extern "C" __global__ void layernorm_backward_f32(float* dx, float* pw, float* pb, const float* dout, const float* x,
                                                  const float* w, const float* mean, const float* rstd, long long n, int c) {
    layerNormBackwardImpl(dx, pw, pb, dout, x, w, mean, rstd, n, c);
}
extern "C" __global__ void layernorm_backward_bf16(bf16* dx, float* pw, float* pb, const bf16* dout, const bf16* x,
                                                   const float* w, const float* mean, const float* rstd, long long n, int c) {
    layerNormBackwardImpl(dx, pw, pb, dout, x, w, mean, rstd, n, c);
}

template <class T>
__device__ void rmsNormForwardImpl(T* out, float* rstd, const T* x, const float* w, long long n, int c, float eps) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < n; r += gridDim.x) {
        const T* xr = x + r * c;
        float ss = 0.f;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float v = ld(xr[j]);
            ss += v * v;
        }
        float rs = rsqrtf(blockSum(ss, scratch) / c + eps);
        for (int j = threadIdx.x; j < c; j += blockDim.x) out[r * c + j] = st<T>(ld(xr[j]) * rs * w[j]);
        if (threadIdx.x == 0) rstd[r] = rs;
    }
}
extern "C" __global__ void rmsnorm_forward_f32(float* out, float* rstd, const float* x, const float* w, long long n, int c, float eps) {
    rmsNormForwardImpl(out, rstd, x, w, n, c, eps);
}
extern "C" __global__ void rmsnorm_forward_bf16(bf16* out, float* rstd, const bf16* x, const float* w, long long n, int c, float eps) {
    rmsNormForwardImpl(out, rstd, x, w, n, c, eps);
}

template <class T>
__device__ void rmsNormBackwardImpl(T* dx, float* partialW, const T* dout, const T* x, const float* w, const float* rstd,
                                    long long n, int c) {
    __shared__ float scratch[32];
    float* pw = partialW + (long long) blockIdx.x * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) pw[j] = 0.f;
    for (long long r = blockIdx.x; r < n; r += gridDim.x) {
        float s = rstd[r];
        float dot = 0.f;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float xhat = ld(x[r * c + j]) * s;
            float d = ld(dout[r * c + j]);
            dot += d * w[j] * xhat;
            pw[j] += d * xhat;
        }
        float k = blockSum(dot, scratch) / c;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float xhat = ld(x[r * c + j]) * s;
            float dnorm = ld(dout[r * c + j]) * w[j];
            dx[r * c + j] = st<T>(ld(dx[r * c + j]) + s * (dnorm - xhat * k));
        }
    }
}
extern "C" __global__ void rmsnorm_backward_f32(float* dx, float* pw, const float* dout, const float* x, const float* w,
                                                const float* rstd, long long n, int c) {
    rmsNormBackwardImpl(dx, pw, dout, x, w, rstd, n, c);
}
extern "C" __global__ void rmsnorm_backward_bf16(bf16* dx, float* pw, const bf16* dout, const bf16* x, const float* w,
                                                 const float* rstd, long long n, int c) {
    rmsNormBackwardImpl(dx, pw, dout, x, w, rstd, n, c);
}

/** dw[j] += sum over blocks b of partial[b, j] (in block order, in double). */
extern "C" __global__ void norm_grad_reduce(float* dw, const float* partial, int blocks, int c) {
    GRID_STRIDE(j, c) {
        double s = 0.0;
        for (int b = 0; b < blocks; b++) s += partial[(long long) b * c + j];
        dw[j] = (float) (dw[j] + s);
    }
}

/** db[j] += sum over rows of dout[r, j] (a linear layer's bias gradient), per column in row order, in double. */
template <class T>
__device__ void biasGradImpl(float* db, const T* dout, long long rows, int cols) {
    GRID_STRIDE(j, cols) {
        double s = 0.0;
        for (long long r = 0; r < rows; r++) s += ld(dout[r * cols + j]);
        db[j] = (float) (db[j] + s);
    }
}
extern "C" __global__ void bias_grad_f32(float* db, const float* dout, long long rows, int cols) { biasGradImpl(db, dout, rows, cols); }
extern "C" __global__ void bias_grad_bf16(float* db, const bf16* dout, long long rows, int cols) { biasGradImpl(db, dout, rows, cols); }
