// Causal softmax attention in blocks, grouped-query heads (query head h reads kv head h / (H / Hkv)), with
// flash attention's memory behaviour: no T x T matrix exists anywhere; the forward streams over keys with an
// online softmax and keeps each row's log-sum-exp, the backward recomputes probabilities from q, k and the
// log-sum-exp. One block: query rows [qFirst, qFirst + qRows) of each sequence's qSeq rows against key/value
// rows [kvFirst, kvFirst + kvRows) of kvSeq, query row i seeing key row j iff j <= i + diagonal (see
// AttentionBlock.java for the row layout). Queries are rows of `q` (pitch qld, head h at column h hd), keys and
// values rows of `kv` (pitch kvld, key head g at g hd, value head g at (kvHeads + g) hd), so a packed QKV
// tensor and packed [k | v] blocks serve alike: the whole attention of a sequence is one block
// (CudaKernels.attentionForward), and context parallelism's ring and all-gather attention are several.
//
// This first version gives each query row (forward, delta, dq) or key row (dk, dv) to one warp, head
// dimensions split over the lanes (hd <= 32 * BLK_MAX_PER_LANE), fp32 arithmetic. It is correct and
// deterministic (every output element has one writer, no atomics) but uses no tensor cores: on the H200 it is
// about 62% of a GPT-2 124M step (docs/gpu.md); the tiled mma/wgmma kernel is the performance work that
// remains. The backward ACCUMULATES into dq and dkv (a ring adds one block's share at a time); the merge
// combines a partial result into the accumulated one with their log-sum-exps.
#include "common.cuh"

#define BLK_MAX_PER_LANE 8

struct BlockShape {
    long long batch;
    int heads, kvHeads, hd, qSeq, qFirst, qRows, kvSeq, kvFirst, kvRows;
    long long diagonal;
};

/** Key rows [0, visible) of the block that query row i sees. */
__device__ __forceinline__ int blockVisible(const BlockShape& s, int i) {
    long long v = (long long) i + s.diagonal + 1;
    return (int) (v < 0 ? 0 : (v > s.kvRows ? s.kvRows : v));
}

template <class T>
__device__ void blockForwardImpl(T* out, float* lse, const T* q, int qld, const T* kv, int kvld, BlockShape s) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= s.batch * s.heads * s.qRows) return;  // whole warps only: blockDim.x is a multiple of 32
    int i = (int) (warp % s.qRows);
    int h = (int) (warp / s.qRows % s.heads);
    long long bi = warp / ((long long) s.qRows * s.heads);
    int g = h / (s.heads / s.kvHeads), hd = s.hd;
    float scale = rsqrtf((float) hd);
    long long qRow = bi * s.qSeq + s.qFirst + i;
    const T* qp = q + qRow * qld + (long long) h * hd;
    float qv[BLK_MAX_PER_LANE], acc[BLK_MAX_PER_LANE];
    for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        qv[e] = d < hd ? ld(qp[d]) : 0.f;
        acc[e] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    int vis = blockVisible(s, i);
    for (int j = 0; j < vis; j++) {
        const T* k = kv + (bi * s.kvSeq + s.kvFirst + j) * kvld + (long long) g * hd;
        const T* v = k + (long long) s.kvHeads * hd;
        float dot = 0.f;
        for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            if (d < hd) dot += qv[e] * ld(k[d]);
        }
        float sc = warpSum(dot) * scale;
        float mNew = fmaxf(m, sc);
        float corr = expf(m - mNew);
        float p = expf(sc - mNew);
        l = l * corr + p;
        for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            acc[e] = acc[e] * corr + (d < hd ? p * ld(v[d]) : 0.f);
        }
        m = mNew;
    }
    T* o = out + qRow * ((long long) s.heads * hd) + (long long) h * hd;
    for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        if (d < hd) o[d] = st<T>(vis == 0 ? 0.f : acc[e] / l);
    }
    if (lane == 0) lse[(bi * s.heads + h) * s.qSeq + s.qFirst + i] = vis == 0 ? -INFINITY : m + logf(l);
}

#define BLOCK_ARGS long long batch, int heads, int kvHeads, int hd, int qSeq, int qFirst, int qRows, int kvSeq, int kvFirst, \
    int kvRows, long long diagonal
#define BLOCK_SHAPE BlockShape{batch, heads, kvHeads, hd, qSeq, qFirst, qRows, kvSeq, kvFirst, kvRows, diagonal}

extern "C" __global__ void attention_block_forward_f32(float* out, float* lse, const float* q, int qld, const float* kv, int kvld,
                                                       BLOCK_ARGS) {
    blockForwardImpl(out, lse, q, qld, kv, kvld, BLOCK_SHAPE);
}
extern "C" __global__ void attention_block_forward_bf16(bf16* out, float* lse, const bf16* q, int qld, const bf16* kv, int kvld,
                                                        BLOCK_ARGS) {
    blockForwardImpl(out, lse, q, qld, kv, kvld, BLOCK_SHAPE);
}

/** delta[(b h) qRows + i] = dot(dout_i, out_i) over head h, for the block's query rows. */
template <class T>
__device__ void blockDeltaImpl(float* delta, const T* dout, const T* out, BlockShape s) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= s.batch * s.heads * s.qRows) return;
    int i = (int) (warp % s.qRows);
    int h = (int) (warp / s.qRows % s.heads);
    long long bi = warp / ((long long) s.qRows * s.heads);
    long long at = (bi * s.qSeq + s.qFirst + i) * ((long long) s.heads * s.hd) + (long long) h * s.hd;
    float sum = 0.f;
    for (int d = lane; d < s.hd; d += 32) sum += ld(dout[at + d]) * ld(out[at + d]);
    sum = warpSum(sum);
    if (lane == 0) delta[warp] = sum;
}
extern "C" __global__ void attention_block_delta_f32(float* delta, const float* dout, const float* out, BLOCK_ARGS) {
    blockDeltaImpl(delta, dout, out, BLOCK_SHAPE);
}
extern "C" __global__ void attention_block_delta_bf16(float* delta, const bf16* dout, const bf16* out, BLOCK_ARGS) {
    blockDeltaImpl(delta, dout, out, BLOCK_SHAPE);
}

/** dq_i += scale * sum over visible j of p_ij (dout_i . v_j - delta_i) k_j; one warp per (b, h, i). */
template <class T>
__device__ void blockBackwardDqImpl(T* dq, int dqld, const T* dout, const float* lse, const float* delta, const T* q, int qld,
                                    const T* kv, int kvld, BlockShape s) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= s.batch * s.heads * s.qRows) return;
    int i = (int) (warp % s.qRows);
    int h = (int) (warp / s.qRows % s.heads);
    long long bi = warp / ((long long) s.qRows * s.heads);
    int vis = blockVisible(s, i);
    if (vis == 0) return;
    int g = h / (s.heads / s.kvHeads), hd = s.hd;
    float scale = rsqrtf((float) hd);
    long long qRow = bi * s.qSeq + s.qFirst + i;
    const T* qp = q + qRow * qld + (long long) h * hd;
    const T* dO = dout + qRow * ((long long) s.heads * hd) + (long long) h * hd;
    float qv[BLK_MAX_PER_LANE], dov[BLK_MAX_PER_LANE], acc[BLK_MAX_PER_LANE];
    for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        qv[e] = d < hd ? ld(qp[d]) : 0.f;
        dov[e] = d < hd ? ld(dO[d]) : 0.f;
        acc[e] = 0.f;
    }
    float li = lse[(bi * s.heads + h) * s.qSeq + s.qFirst + i], di = delta[warp];
    for (int j = 0; j < vis; j++) {
        const T* k = kv + (bi * s.kvSeq + s.kvFirst + j) * kvld + (long long) g * hd;
        const T* v = k + (long long) s.kvHeads * hd;
        float sdot = 0.f, pdot = 0.f;
        for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            if (d < hd) {
                sdot += qv[e] * ld(k[d]);
                pdot += dov[e] * ld(v[d]);
            }
        }
        float p = expf(warpSum(sdot) * scale - li);
        float ds = p * (warpSum(pdot) - di);
        for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
            int d = lane + 32 * e;
            if (d < hd) acc[e] += ds * ld(k[d]);
        }
    }
    T* o = dq + qRow * dqld + (long long) h * hd;
    for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        if (d < hd) o[d] = st<T>(ld(o[d]) + scale * acc[e]);
    }
}
extern "C" __global__ void attention_block_backward_dq_f32(float* dq, int dqld, const float* dout, const float* lse,
                                                           const float* delta, const float* q, int qld, const float* kv,
                                                           int kvld, BLOCK_ARGS) {
    blockBackwardDqImpl(dq, dqld, dout, lse, delta, q, qld, kv, kvld, BLOCK_SHAPE);
}
extern "C" __global__ void attention_block_backward_dq_bf16(bf16* dq, int dqld, const bf16* dout, const float* lse,
                                                            const float* delta, const bf16* q, int qld, const bf16* kv,
                                                            int kvld, BLOCK_ARGS) {
    blockBackwardDqImpl(dq, dqld, dout, lse, delta, q, qld, kv, kvld, BLOCK_SHAPE);
}

/**
 * For kv head g and key row j of the block: dk_j += scale * sum over the group's heads h and the query rows i
 * that see j (i >= j - diagonal) of ds_hij q_i^h, dv_j += sum of p_hij dout_i^h. One warp per (b, g, j).
 */
template <class T>
__device__ void blockBackwardDkvImpl(T* dkv, int dkvld, const T* dout, const float* lse, const float* delta, const T* q, int qld,
                                     const T* kv, int kvld, BlockShape s) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= s.batch * s.kvHeads * s.kvRows) return;
    int j = (int) (warp % s.kvRows);
    int g = (int) (warp / s.kvRows % s.kvHeads);
    long long bi = warp / ((long long) s.kvRows * s.kvHeads);
    long long firstQ = (long long) j - s.diagonal;  // the first query row that sees key row j
    int i0 = (int) (firstQ < 0 ? 0 : firstQ);
    if (firstQ >= s.qRows) return;
    int group = s.heads / s.kvHeads, hd = s.hd, c = s.heads * s.hd;
    float scale = rsqrtf((float) hd);
    long long kvRow = bi * s.kvSeq + s.kvFirst + j;
    const T* k = kv + kvRow * kvld + (long long) g * hd;
    const T* v = k + (long long) s.kvHeads * hd;
    float kv_[BLK_MAX_PER_LANE], vv[BLK_MAX_PER_LANE], dk[BLK_MAX_PER_LANE], dv[BLK_MAX_PER_LANE];
    for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        kv_[e] = d < hd ? ld(k[d]) : 0.f;
        vv[e] = d < hd ? ld(v[d]) : 0.f;
        dk[e] = 0.f;
        dv[e] = 0.f;
    }
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int i = i0; i < s.qRows; i++) {
            long long qRow = bi * s.qSeq + s.qFirst + i;
            const T* qp = q + qRow * qld + (long long) h * hd;
            const T* dO = dout + qRow * c + (long long) h * hd;
            float sdot = 0.f, pdot = 0.f;
            for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
                int d = lane + 32 * e;
                if (d < hd) {
                    sdot += ld(qp[d]) * kv_[e];
                    pdot += ld(dO[d]) * vv[e];
                }
            }
            long long row = (bi * s.heads + h) * s.qRows + i;
            float p = expf(warpSum(sdot) * scale - lse[(bi * s.heads + h) * s.qSeq + s.qFirst + i]);
            float ds = p * (warpSum(pdot) - delta[row]);
            for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
                int d = lane + 32 * e;
                if (d < hd) {
                    dv[e] += p * ld(dO[d]);
                    dk[e] += ds * ld(qp[d]);
                }
            }
        }
    }
    T* outK = dkv + kvRow * dkvld + (long long) g * hd;
    T* outV = outK + (long long) s.kvHeads * hd;
    for (int e = 0; e < BLK_MAX_PER_LANE; e++) {
        int d = lane + 32 * e;
        if (d < hd) {
            outK[d] = st<T>(ld(outK[d]) + scale * dk[e]);
            outV[d] = st<T>(ld(outV[d]) + dv[e]);
        }
    }
}
extern "C" __global__ void attention_block_backward_dkv_f32(float* dkv, int dkvld, const float* dout, const float* lse,
                                                            const float* delta, const float* q, int qld, const float* kv,
                                                            int kvld, BLOCK_ARGS) {
    blockBackwardDkvImpl(dkv, dkvld, dout, lse, delta, q, qld, kv, kvld, BLOCK_SHAPE);
}
extern "C" __global__ void attention_block_backward_dkv_bf16(bf16* dkv, int dkvld, const bf16* dout, const float* lse,
                                                             const float* delta, const bf16* q, int qld, const bf16* kv,
                                                             int kvld, BLOCK_ARGS) {
    blockBackwardDkvImpl(dkv, dkvld, dout, lse, delta, q, qld, kv, kvld, BLOCK_SHAPE);
}

/**
 * Online-softmax merge of a partial result into the accumulated one, one warp per (b, h, i) query row of the
 * block: lse' = log(exp(lse) + exp(partLse)), out' = out exp(lse - lse') + partOut exp(partLse - lse'), the
 * coefficients in double as the CPU's; a partial result that saw no key (partLse = -inf) changes nothing, an
 * accumulated one that saw none (lse = -inf) is replaced.
 */
template <class T>
__device__ void mergeImpl(T* out, float* lse, const T* partOut, const float* partLse, BlockShape s) {
    long long warp = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= s.batch * s.heads * s.qRows) return;
    int i = (int) (warp % s.qRows);
    int h = (int) (warp / s.qRows % s.heads);
    long long bi = warp / ((long long) s.qRows * s.heads);
    long long l = (bi * s.heads + h) * s.qSeq + s.qFirst + i;
    float a = lse[l], b = partLse[l];
    __syncwarp();  // every lane has read lse before lane 0 rewrites it
    if (b == -INFINITY) return;
    double m = fmax((double) a, (double) b);
    double merged = m + log(exp(a - m) + exp(b - m));
    double wa = exp(a - merged), wb = exp(b - merged);
    long long at = (bi * s.qSeq + s.qFirst + i) * ((long long) s.heads * s.hd) + (long long) h * s.hd;
    for (int d = lane; d < s.hd; d += 32) {
        float acc = a == -INFINITY ? 0.f : ld(out[at + d]);
        out[at + d] = st<T>((float) (wa * acc + wb * ld(partOut[at + d])));
    }
    if (lane == 0) lse[l] = (float) merged;
}
extern "C" __global__ void attention_merge_f32(float* out, float* lse, const float* partOut, const float* partLse, BLOCK_ARGS) {
    mergeImpl(out, lse, partOut, partLse, BLOCK_SHAPE);
}
extern "C" __global__ void attention_merge_bf16(bf16* out, float* lse, const bf16* partOut, const float* partLse, BLOCK_ARGS) {
    mergeImpl(out, lse, partOut, partLse, BLOCK_SHAPE);
}
