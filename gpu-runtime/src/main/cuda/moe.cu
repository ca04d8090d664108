// Mixture-of-experts kernels (docs/moe.md; contracts on org.sparkatron.device.Kernels): the router's top-k and
// its backward, the load-balancing and z losses, the capacity drop, dispatch (permute) and combine (unpermute)
// with their backwards, and the (source, expert) chunk reordering of expert parallelism. The grouped GEMMs are
// in grouped_gemm.cu.
//
// Determinism and parity with the CPU device (CpuMoeKernels): router arithmetic is per token in double, in the
// CPU's order, and rounded to float once, so the top-k choices and weights are the CPU's; reductions are
// fixed-grid partials added in order (reduce_finish in optim.cu); every output element has one writer (no
// atomics); a token's assignments keep token order inside an expert's block through block-wide prefix sums.
#include "common.cuh"

#define MOE_FULL 0xffffffffu

/** Exclusive prefix sum of v over the block in thread order; *total gets the block's sum. scratch: 33 ints. */
__device__ __forceinline__ int blockExclusiveScan(int v, int* scratch, int* total) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    int inc = v;
    for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(MOE_FULL, inc, o);
        if (lane >= o) inc += u;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        int w = lane < warps ? scratch[lane] : 0;
        int winc = w;
        for (int o = 1; o < 32; o <<= 1) {
            int u = __shfl_up_sync(MOE_FULL, winc, o);
            if (lane >= o) winc += u;
        }
        scratch[lane] = winc - w;
        if (lane == 31) scratch[32] = winc;
    }
    __syncthreads();
    int result = scratch[warp] + inc - v;
    *total = scratch[32];
    __syncthreads();
    return result;
}

/** The softmax's shift and normaliser of a token's logits (max, sum of exp(l - max)), in double, in expert order. */
__device__ __forceinline__ void softmaxTerms(const float* l, int e, double* max, double* sum) {
    double m = -INFINITY;
    for (int i = 0; i < e; i++) m = fmax(m, (double) l[i]);
    double s = 0.0;
    for (int i = 0; i < e; i++) s += exp((double) l[i] - m);
    *max = m;
    *sum = s;
}

/** Score i of a token: sigmoid(l_i), or the softmax exp(l_i - max) / sum. */
__device__ __forceinline__ double moeScore(const float* l, int i, int sigmoid, double max, double sum) {
    return sigmoid ? 1.0 / (1.0 + exp(-(double) l[i])) : exp((double) l[i] - max) / sum;
}

/**
 * Top-k per token (one thread per token): the k highest scores (plus the expert bias, if any: it chooses, it does
 * not weigh) in decreasing order, ties to the lower expert, chosen by repeated selection of the best value after
 * the previous choice in that order (no per-thread arrays).
 */
extern "C" __global__ void moe_route(const float* logits, int* experts, float* probs, float* scores, const float* bias,
                                     long long n, int e, int k, int sigmoid, int normTopK, float scale) {
    GRID_STRIDE(t, n) {
        const float* l = logits + t * e;
        double max = 0.0, sum = 1.0;
        if (!sigmoid) softmaxTerms(l, e, &max, &sum);
        double prevS = INFINITY;
        int prevI = -1;
        double top = 0.0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            double bestS = 0.0;
            for (int i = 0; i < e; i++) {
                double s = moeScore(l, i, sigmoid, max, sum);
                if (bias != nullptr) s += (double) bias[i];
                bool after = s < prevS || (s == prevS && i > prevI);
                if (after && (best < 0 || s > bestS)) {
                    best = i;
                    bestS = s;
                }
            }
            experts[t * k + j] = best;
            top += moeScore(l, best, sigmoid, max, sum);
            prevS = bestS;
            prevI = best;
        }
        for (int j = 0; j < k; j++) {
            double s = moeScore(l, experts[t * k + j], sigmoid, max, sum);
            probs[t * k + j] = (float) ((normTopK ? s / top : s) * (double) scale);
        }
        if (scores != nullptr) {
            double all = 0.0;
            for (int i = 0; i < e; i++) all += moeScore(l, i, sigmoid, max, sum);
            for (int i = 0; i < e; i++) {
                double s = moeScore(l, i, sigmoid, max, sum);
                scores[t * e + i] = (float) (sigmoid ? s / all : s);
            }
        }
    }
}

/**
 * One block per expert i: count_i = assignments to i, auxGrad[i] = gradWeight * factor * count_i and
 * partial[i] = count_i * sum_t scores[t, i] (the loss is factor * sum_i partial[i], added by reduce_finish).
 */
extern "C" __global__ void moe_aux_partial(const float* scores, const int* experts, float* auxGrad, double* partial, long long n,
                                           int e, int k, float gradWeight, double factor) {
    __shared__ double scratch[32];
    for (int i = blockIdx.x; i < e; i += gridDim.x) {
        double count = 0.0, col = 0.0;
        for (long long a = threadIdx.x; a < n * k; a += blockDim.x) count += experts[a] == i ? 1.0 : 0.0;
        for (long long t = threadIdx.x; t < n; t += blockDim.x) col += scores[t * e + i];
        count = blockSumD(count, scratch);
        col = blockSumD(col, scratch);
        if (threadIdx.x == 0) {
            auxGrad[i] = (float) ((double) gradWeight * factor * count);
            partial[i] = count * col;
        }
    }
}

/** partial[block] = sum of logsumexp(logits[t])^2 over this block's tokens (grid-stride), in double. */
extern "C" __global__ void moe_z_partial(const float* logits, double* partial, long long n, int e) {
    __shared__ double scratch[32];
    double z = 0.0;
    GRID_STRIDE(t, n) {
        double max, sum;
        softmaxTerms(logits + t * e, e, &max, &sum);
        double lse = max + log(sum);
        z += lse * lse;
    }
    z = blockSumD(z, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = z;
}

/** An order-preserving unsigned key of a float (larger float, larger key; -0 below +0, as Java's Float.compare). */
__device__ __forceinline__ unsigned floatKey(float f) {
    unsigned u = (unsigned) __float_as_int(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/**
 * Capacity (Megatron's "probs" policy), one block per expert x: when more than `cap` assignments chose x, the
 * cap-th highest weight is found by a radix select over the weights' keys (32 counting passes), the
 * assignments above it stay, and of those equal to it the lowest assignment indices (the lower tokens) fill the
 * remaining places, found with a block prefix sum in assignment order. routed = x or -1, dropped weights 0,
 * partial[x] = the number dropped. Block 0 also copies the -1 of assignments that chose no expert.
 */
extern "C" __global__ void moe_capacity(int* routed, float* probs, const int* experts, double* partial, long long nk, int e,
                                        int cap) {
    __shared__ double dscratch[32];
    __shared__ int iscratch[33];
    if (blockIdx.x == 0) {
        for (long long a = threadIdx.x; a < nk; a += blockDim.x) {
            if (experts[a] < 0) routed[a] = -1;
        }
    }
    for (int x = blockIdx.x; x < e; x += gridDim.x) {
        double cntD = 0.0;
        for (long long a = threadIdx.x; a < nk; a += blockDim.x) cntD += experts[a] == x ? 1.0 : 0.0;
        long long cnt = (long long) blockSumD(cntD, dscratch);
        if (cnt <= cap) {
            for (long long a = threadIdx.x; a < nk; a += blockDim.x) {
                if (experts[a] == x) routed[a] = x;
            }
            if (threadIdx.x == 0) partial[x] = 0.0;
            continue;
        }
        unsigned threshold = 0u; // the largest key with at least cap member keys >= it: the cap-th highest
        for (int bit = 31; bit >= 0; bit--) {
            unsigned cand = threshold | (1u << bit);
            double ge = 0.0;
            for (long long a = threadIdx.x; a < nk; a += blockDim.x) {
                ge += experts[a] == x && floatKey(probs[a]) >= cand ? 1.0 : 0.0;
            }
            if (blockSumD(ge, dscratch) >= (double) cap) threshold = cand;
        }
        double aboveD = 0.0;
        for (long long a = threadIdx.x; a < nk; a += blockDim.x) {
            aboveD += experts[a] == x && floatKey(probs[a]) > threshold ? 1.0 : 0.0;
        }
        long long ties = cap - (long long) blockSumD(aboveD, dscratch); // places left for weights equal to the threshold
        long long before = 0;                                          // equal weights seen in earlier chunks
        for (long long base = 0; base < nk; base += blockDim.x) {
            long long a = base + threadIdx.x;
            bool member = a < nk && experts[a] == x;
            unsigned key = member ? floatKey(probs[a]) : 0u;
            int tie = member && key == threshold ? 1 : 0;
            int chunk;
            int rank = blockExclusiveScan(tie, iscratch, &chunk);
            if (member) {
                bool keep = key > threshold || (tie && before + rank < ties);
                routed[a] = keep ? x : -1;
                if (!keep) probs[a] = 0.f;
            }
            before += chunk;
        }
        if (threadIdx.x == 0) partial[x] = (double) (cnt - cap);
    }
}

/**
 * Dispatch, step 1, one block per expert x: pos[a] = how many earlier assignments (in token-major order) went to
 * x, for every assignment a to x; counts[x] = the assignments to x.
 */
extern "C" __global__ void moe_rank(const int* routed, int* pos, int* counts, long long nk, int e) {
    __shared__ int scratch[33];
    for (int x = blockIdx.x; x < e; x += gridDim.x) {
        int running = 0;
        for (long long base = 0; base < nk; base += blockDim.x) {
            long long a = base + threadIdx.x;
            int member = a < nk && routed[a] == x ? 1 : 0;
            int chunk;
            int rank = blockExclusiveScan(member, scratch, &chunk);
            if (member) pos[a] = running + rank;
            running += chunk;
        }
        if (threadIdx.x == 0) counts[x] = running;
    }
}

/** Dispatch, step 2 (one thread): where each expert's block starts, packed (prefix sums) or padded (x * capacity). */
extern "C" __global__ void moe_offsets(const int* counts, int* offsets, int e, int capacity) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        int at = 0;
        for (int i = 0; i < e; i++) {
            offsets[i] = capacity > 0 ? i * capacity : at;
            at += counts[i];
        }
        offsets[e] = capacity > 0 ? e * capacity : at;
    }
}

/** Dispatch, step 3, one block per assignment (grid-stride): rowMap[a] = its row, and the token's row copied there. */
extern "C" __global__ void moe_scatter(float* out, int* rowMap, const float* x, const int* routed, const int* pos,
                                       const int* offsets, long long nk, int c, int k) {
    for (long long a = blockIdx.x; a < nk; a += gridDim.x) {
        int g = routed[a];
        int r = g < 0 ? -1 : offsets[g] + pos[a];
        if (threadIdx.x == 0) rowMap[a] = r;
        if (r < 0) continue;
        const float* src = x + (a / k) * c;
        float* dst = out + (long long) r * c;
        for (int i = threadIdx.x; i < c; i += blockDim.x) dst[i] = src[i];
    }
}

/** Dispatch padded to capacity: rows of expert g's block past its count are zero. */
extern "C" __global__ void moe_pad_zero(float* out, const int* counts, int e, int capacity, int c) {
    GRID_STRIDE(idx, (long long) e * capacity * c) {
        long long r = idx / c;
        int g = (int) (r / capacity);
        if (r - (long long) g * capacity >= counts[g]) out[idx] = 0.f;
    }
}

/** dx[t, i] += sum_j dperm[rowMap[t, j], i] over kept assignments, in j order (the CPU's order). */
extern "C" __global__ void moe_permute_backward(float* dx, const float* dperm, const int* rowMap, long long n, int c, int k) {
    GRID_STRIDE(idx, n * c) {
        long long t = idx / c;
        int i = (int) (idx - t * c);
        float acc = dx[idx];
        for (int j = 0; j < k; j++) {
            int r = rowMap[t * k + j];
            if (r >= 0) acc += dperm[(long long) r * c + i];
        }
        dx[idx] = acc;
    }
}

/** Combine: out[t, i] = sum_j probs[t, j] * y[rowMap[t, j], i] over kept assignments, in j order. */
extern "C" __global__ void moe_unpermute(float* out, const float* y, const int* rowMap, const float* probs, long long n, int c,
                                         int k) {
    GRID_STRIDE(idx, n * c) {
        long long t = idx / c;
        int i = (int) (idx - t * c);
        float acc = 0.f;
        for (int j = 0; j < k; j++) {
            int r = rowMap[t * k + j];
            if (r >= 0) acc += probs[t * k + j] * y[(long long) r * c + i];
        }
        out[idx] = acc;
    }
}

/**
 * Combine's backward, one block per assignment (grid-stride): dy[rowMap[a]] = probs[a] * dout[t] and
 * dprobs[a] = dout[t] . y[rowMap[a]] in double (0 where dropped). The rows no assignment reaches were zeroed
 * before (a memset).
 */
extern "C" __global__ void moe_unpermute_backward(float* dy, float* dprobs, const float* dout, const float* y, const int* rowMap,
                                                  const float* probs, long long nk, int c, int k) {
    __shared__ double scratch[32];
    for (long long a = blockIdx.x; a < nk; a += gridDim.x) {
        int r = rowMap[a];
        if (r < 0) {
            if (threadIdx.x == 0) dprobs[a] = 0.f;
            continue;
        }
        float w = probs[a];
        const float* g = dout + (a / k) * c;
        const float* yr = y + (long long) r * c;
        float* d = dy + (long long) r * c;
        double dot = 0.0;
        for (int i = threadIdx.x; i < c; i += blockDim.x) {
            float gi = g[i];
            d[i] = w * gi;
            dot += (double) gi * yr[i];
        }
        dot = blockSumD(dot, scratch);
        if (threadIdx.x == 0) dprobs[a] = (float) dot;
    }
}

/**
 * The router's backward, one thread per token, in double and in the CPU's order: through the top-k weights
 * (choices fixed), the load-balancing scores (auxGrad, may be null) and the z-loss; dlogits overwritten.
 */
extern "C" __global__ void moe_route_backward(float* dlogits, const float* dprobs, const float* logits, const int* experts,
                                              const float* auxGrad, float zWeight, long long n, int e, int k, int sigmoid,
                                              int normTopK, float scale) {
    GRID_STRIDE(t, n) {
        const float* l = logits + t * e;
        const int* ex = experts + t * k;
        const float* dp = dprobs + t * k;
        double max, sum;
        softmaxTerms(l, e, &max, &sum);
        double top = 0.0, dot = 0.0;
        for (int j = 0; j < k; j++) {
            double u = moeScore(l, ex[j], sigmoid, max, sum);
            top += u;
            dot += (double) dp[j] * u;
        }
        double all = 0.0;
        for (int i = 0; i < e; i++) all += moeScore(l, i, sigmoid, max, sum);
        double ga = 0.0;
        if (auxGrad != nullptr) {
            for (int i = 0; i < e; i++) {
                double s = moeScore(l, i, sigmoid, max, sum);
                ga += (double) auxGrad[i] * (sigmoid ? s / all : s);
            }
        }
        // ds_i: the gradient with respect to score i; sds = sum_i s_i ds_i (the softmax's backward needs it)
        double sds = 0.0;
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < e; i++) {
                double ds = 0.0;
                for (int j = 0; j < k; j++) {
                    if (ex[j] != i) continue;
                    double d = dp[j];
                    ds += normTopK ? (double) scale * (d - dot / top) / top : (double) scale * d;
                }
                if (auxGrad != nullptr) ds += sigmoid ? ((double) auxGrad[i] - ga) / all : (double) auxGrad[i];
                double s = moeScore(l, i, sigmoid, max, sum);
                if (pass == 0) {
                    sds += s * ds;
                    continue;
                }
                float v = (float) (sigmoid ? ds * s * (1.0 - s) : s * (ds - sds));
                if (zWeight != 0.f) {
                    double lse = max + log(sum);
                    double soft = exp((double) l[i] - lse);
                    v = (float) ((double) v + 2.0 * (double) zWeight * lse * soft);
                }
                dlogits[t * e + i] = v;
            }
        }
    }
}

/** Start of chunk x = (i, j) of an a x b grid of row blocks, in i-major (jMajor 0) or j-major order. */
__device__ __forceinline__ long long chunkStart(const int* counts, int a, int b, int x, int jMajor) {
    int i = x / b, j = x % b;
    long long at = 0;
    if (!jMajor) {
        for (int y = 0; y < x; y++) at += counts[y];
        return at;
    }
    for (int jj = 0; jj < j; jj++) {
        for (int ii = 0; ii < a; ii++) at += counts[ii * b + jj];
    }
    for (int ii = 0; ii < i; ii++) at += counts[ii * b + j];
    return at;
}

/**
 * Chunk reordering: blocks (x + a b p) for p in [0, parts) copy chunk x (i-major to j-major, or back with
 * inverse), each part a strided share of its rows' elements.
 */
extern "C" __global__ void moe_chunk_copy(float* out, const float* in, const int* counts, int a, int b, int c, int inverse,
                                          int parts) {
    int chunks = a * b;
    for (long long blk = blockIdx.x; blk < (long long) chunks * parts; blk += gridDim.x) {
        int x = (int) (blk % chunks);
        int part = (int) (blk / chunks);
        long long from = chunkStart(counts, a, b, x, inverse) * c;
        long long to = chunkStart(counts, a, b, x, !inverse) * c;
        long long len = (long long) counts[x] * c;
        for (long long q = (long long) part * blockDim.x + threadIdx.x; q < len; q += (long long) parts * blockDim.x) {
            out[to + q] = in[from + q];
        }
    }
}

/** offsets[j] = where local expert j's rows start in j-major order; offsets[b] = the end (one thread). */
extern "C" __global__ void moe_chunk_offsets(const int* counts, int* offsets, int a, int b) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        int at = 0;
        for (int j = 0; j < b; j++) {
            offsets[j] = at;
            for (int i = 0; i < a; i++) at += counts[i * b + j];
        }
        offsets[b] = at;
    }
}

/** tally[i] += counts[i]: a step's tokens per expert, for the aux-loss-free bias. */
extern "C" __global__ void moe_count_tokens(double* tally, const int* counts, int e) {
    GRID_STRIDE(i, e) tally[i] += (double) counts[i];
}

/** bias[i] += rate * sign(mean(tally) - tally[i]), then tally = 0 (one block; the mean summed in order by thread 0). */
extern "C" __global__ void moe_expert_bias_update(float* bias, double* tally, int e, float rate) {
    __shared__ double mean;
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int i = 0; i < e; i++) sum += tally[i];
        mean = sum / e;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < e; i += blockDim.x) {
        double offset = mean - tally[i];
        float sign = offset > 0.0 ? 1.f : (offset < 0.0 ? -1.f : 0.f);
        bias[i] = bias[i] + sign * rate;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < e; i += blockDim.x) tally[i] = 0.0;
}
