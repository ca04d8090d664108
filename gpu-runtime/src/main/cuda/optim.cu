// Optimizer and gradient utilities over flat fp32 blocks: AdamW, and sums / sums of squares accumulated
// in double into F64 device scalars. Reductions are two-stage with a fixed grid (partials per block, then
// one thread adds them in block order), so they are deterministic: a resumed run gets the same bits.
#include "common.cuh"

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long long from, long long count, float beta1,
                                     float beta2, float eps, float decay, float stepSize, float invSqrtBc2) {
    GRID_STRIDE(k, count) {
        long long i = from + k;
        float gi = g[i];
        float mi = beta1 * m[i] + (1 - beta1) * gi;
        float vi = beta2 * v[i] + (1 - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - stepSize * mi / (sqrtf(vi) * invSqrtBc2 + eps);
    }
}

/** partial[block] = sum of x^2 (squares = 1) or of x over this block's grid-stride share, in double. */
extern "C" __global__ void reduce_partial_f32(const float* x, long long n, int squares, double* partial) {
    __shared__ double scratch[32];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double e = x[i];
        s += squares ? e * e : e;
    }
    s = blockSumD(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/** acc[slot] += scale * sum of partial[0, blocks), in order (one thread). */
extern "C" __global__ void reduce_finish(double* acc, int slot, const double* partial, int blocks, double scale) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double s = 0.0;
        for (int b = 0; b < blocks; b++) s += partial[b];
        acc[slot] += scale * s;
    }
}
