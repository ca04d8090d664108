// Causal softmax attention over packed QKV rows [q: H*hd | k: Hkv*hd | v: Hkv*hd], grouped-query heads
// (query head h reads kv head h / (H / Hkv)). Flash-attention's memory behaviour: no T x T matrix exists
// anywhere; the forward streams over keys with an online softmax and keeps each row's log-sum-exp, the
// backward recomputes probabilities from q, k and the log-sum-exp.
//
// This first version gives each query row (forward, dq) or key row (dk, dv) to one warp, head dimensions
// split over the lanes (hd <= 32 * ATTN_MAX_PER_LANE), fp32 arithmetic. It is correct and deterministic
// (every output element has one writer) but does not use tensor cores: the tiled mma/wgmma kernel is the
// performance work that remains (docs/gpu.md).
#include "common.cuh"

#define ATTN_MAX_PER_LANE 8


template <class T>
__device__ void attentionForwardImpl(T* out, float* lse, const T* qkv, long long b, int t, int heads, int kvHeads, int hd) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= b * heads * t) return;  // whole warps only: blockDim.x is a multiple of 32
    int i = (int) (warp % t);
    int h = (int) (warp / t % heads);
    long long bi = warp / ((long long) t * heads);
    int group = heads / kvHeads, g = h / group;
    int width = (heads + 2 * kvHeads) * hd;
    float scale = rsqrtf((float) hd);
    const T* q = qkv + (bi * t + i) * width + (long long) h * hd;
    float qv[ATTN_MAX_PER_LANE], acc[ATTN_MAX_PER_LANE];
    for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        qv[e] = d < hd ? ld(q[d]) : 0.f;
        acc[e] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int j = 0; j <= i; j++) {
        const T* k = qkv + (bi * t + j) * width + (long long) (heads + g) * hd;
        const T* v = qkv + (bi * t + j) * width + (long long) (heads + kvHeads + g) * hd;
        float dot = 0.f;
        for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            if (d < hd) dot += qv[e] * ld(k[d]);
        }
        float s = warpSum(dot) * scale;
        float mNew = fmaxf(m, s);
        float corr = expf(m - mNew);
        float p = expf(s - mNew);
        l = l * corr + p;
        for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            acc[e] = acc[e] * corr + (d < hd ? p * ld(v[d]) : 0.f);
        }
        m = mNew;
    }
    int c = heads * hd;
    T* o = out + (bi * t + i) * c + (long long) h * hd;
    for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        if (d < hd) o[d] = st<T>(acc[e] / l);
    }
    if (lane == 0) lse[(bi * heads + h) * t + i] = m + logf(l);
}
extern "C" __global__ void attention_forward_f32(float* out, float* lse, const float* qkv, long long b, int t, int heads,
                                                 int kvHeads, int hd) {
    attentionForwardImpl(out, lse, qkv, b, t, heads, kvHeads, hd);
}
extern "C" __global__ void attention_forward_bf16(bf16* out, float* lse, const bf16* qkv, long long b, int t, int heads,
                                                  int kvHeads, int hd) {
    attentionForwardImpl(out, lse, qkv, b, t, heads, kvHeads, hd);
}

/** delta[b, h, i] = dot(dout_i, out_i) for head h: the softmax backward's row term. */
template <class T>
__device__ void attentionDeltaImpl(float* delta, const T* dout, const T* out, long long b, int t, int heads, int hd) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= b * heads * t) return;
    int i = (int) (warp % t);
    int h = (int) (warp / t % heads);
    long long bi = warp / ((long long) t * heads);
    long long at = (bi * t + i) * (long long) heads * hd + (long long) h * hd;
    float s = 0.f;
    for (int d = lane; d < hd; d += 32) s += ld(dout[at + d]) * ld(out[at + d]);
    s = warpSum(s);
    if (lane == 0) delta[(bi * heads + h) * t + i] = s;
}
extern "C" __global__ void attention_delta_f32(float* delta, const float* dout, const float* out, long long b, int t, int heads, int hd) {
    attentionDeltaImpl(delta, dout, out, b, t, heads, hd);
}
extern "C" __global__ void attention_delta_bf16(float* delta, const bf16* dout, const bf16* out, long long b, int t, int heads, int hd) {
    attentionDeltaImpl(delta, dout, out, b, t, heads, hd);
}

/** dq_i = scale * sum_j<=i p_ij (dout_i . v_j - delta_i) k_j, one warp per (b, h, i); overwrites dq. */
template <class T>
__device__ void attentionBackwardDqImpl(T* dqkv, const T* dout, const float* lse, const float* delta, const T* qkv, long long b,
                                        int t, int heads, int kvHeads, int hd) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= b * heads * t) return;
    int i = (int) (warp % t);
    int h = (int) (warp / t % heads);
    long long bi = warp / ((long long) t * heads);
    int group = heads / kvHeads, g = h / group;
    int width = (heads + 2 * kvHeads) * hd, c = heads * hd;
    float scale = rsqrtf((float) hd);
    const T* q = qkv + (bi * t + i) * width + (long long) h * hd;
    const T* dO = dout + (bi * t + i) * c + (long long) h * hd;
    float qv[ATTN_MAX_PER_LANE], dov[ATTN_MAX_PER_LANE], dq[ATTN_MAX_PER_LANE];
    for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        qv[e] = d < hd ? ld(q[d]) : 0.f;
        dov[e] = d < hd ? ld(dO[d]) : 0.f;
        dq[e] = 0.f;
    }
    long long row = (bi * heads + h) * t + i;
    float li = lse[row], di = delta[row];
    for (int j = 0; j <= i; j++) {
        const T* k = qkv + (bi * t + j) * width + (long long) (heads + g) * hd;
        const T* v = qkv + (bi * t + j) * width + (long long) (heads + kvHeads + g) * hd;
        float sdot = 0.f, pdot = 0.f;
        for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            if (d < hd) {
                sdot += qv[e] * ld(k[d]);
                pdot += dov[e] * ld(v[d]);
            }
        }
        float p = expf(warpSum(sdot) * scale - li);
        float ds = p * (warpSum(pdot) - di);
        for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            if (d < hd) dq[e] += ds * ld(k[d]);
        }
    }
    T* out = dqkv + (bi * t + i) * width + (long long) h * hd;
    for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        if (d < hd) out[d] = st<T>(scale * dq[e]);
    }
}
extern "C" __global__ void attention_backward_dq_f32(float* dqkv, const float* dout, const float* lse, const float* delta,
                                                     const float* qkv, long long b, int t, int heads, int kvHeads, int hd) {
    attentionBackwardDqImpl(dqkv, dout, lse, delta, qkv, b, t, heads, kvHeads, hd);
}
extern "C" __global__ void attention_backward_dq_bf16(bf16* dqkv, const bf16* dout, const float* lse, const float* delta,
                                                      const bf16* qkv, long long b, int t, int heads, int kvHeads, int hd) {
    attentionBackwardDqImpl(dqkv, dout, lse, delta, qkv, b, t, heads, kvHeads, hd);
}

/**
 * For kv head g and key row j: dk_j = scale * sum over the group's heads h and queries i >= j of
 * ds_hij q_i^h, dv_j = sum of p_hij dout_i^h. One warp per (b, g, j); overwrites dk and dv.
 */
template <class T>
__device__ void attentionBackwardDkvImpl(T* dqkv, const T* dout, const float* lse, const float* delta, const T* qkv, long long b,
                                         int t, int heads, int kvHeads, int hd) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= b * kvHeads * t) return;
    int j = (int) (warp % t);
    int g = (int) (warp / t % kvHeads);
    long long bi = warp / ((long long) t * kvHeads);
    int group = heads / kvHeads;
    int width = (heads + 2 * kvHeads) * hd, c = heads * hd;
    float scale = rsqrtf((float) hd);
    const T* k = qkv + (bi * t + j) * width + (long long) (heads + g) * hd;
    const T* v = qkv + (bi * t + j) * width + (long long) (heads + kvHeads + g) * hd;
    float kv[ATTN_MAX_PER_LANE], vv[ATTN_MAX_PER_LANE], dk[ATTN_MAX_PER_LANE], dv[ATTN_MAX_PER_LANE];
    for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        kv[e] = d < hd ? ld(k[d]) : 0.f;
        vv[e] = d < hd ? ld(v[d]) : 0.f;
        dk[e] = 0.f;
        dv[e] = 0.f;
    }
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int i = j; i < t; i++) {
            const T* q = qkv + (bi * t + i) * width + (long long) h * hd;
            const T* dO = dout + (bi * t + i) * c + (long long) h * hd;
            float sdot = 0.f, pdot = 0.f;
            for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
                int d = lane + 32 * e;
                if (d < hd) {
                    sdot += ld(q[d]) * kv[e];
                    pdot += ld(dO[d]) * vv[e];
                }
            }
            long long row = (bi * heads + h) * t + i;
            float p = expf(warpSum(sdot) * scale - lse[row]);
            float ds = p * (warpSum(pdot) - delta[row]);
            for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
                int d = lane + 32 * e;
                if (d < hd) {
                    dv[e] += p * ld(dO[d]);
                    dk[e] += ds * ld(q[d]);
                }
            }
        }
    }
    T* outK = dqkv + (bi * t + j) * width + (long long) (heads + g) * hd;
    T* outV = dqkv + (bi * t + j) * width + (long long) (heads + kvHeads + g) * hd;
    for (int e = 0; e < ATTN_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        if (d < hd) {
            outK[d] = st<T>(scale * dk[e]);
            outV[d] = st<T>(dv[e]);
        }
    }
}
extern "C" __global__ void attention_backward_dkv_f32(float* dqkv, const float* dout, const float* lse, const float* delta,
                                                      const float* qkv, long long b, int t, int heads, int kvHeads, int hd) {
    attentionBackwardDkvImpl(dqkv, dout, lse, delta, qkv, b, t, heads, kvHeads, hd);
}
extern "C" __global__ void attention_backward_dkv_bf16(bf16* dqkv, const bf16* dout, const float* lse, const float* delta,
                                                       const bf16* qkv, long long b, int t, int heads, int kvHeads, int hd) {
    attentionBackwardDkvImpl(dqkv, dout, lse, delta, qkv, b, t, heads, kvHeads, hd);
}
