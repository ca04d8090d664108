// Softmax cross-entropy over a vocabulary that may be split across ranks (Megatron's vocab-parallel loss):
// per row the max, then the sums, then the finish, each one block per row. A target outside [0, vocab)
// is recorded in `error` ([flag, row, id, vocab], the first one wins) for the device to report at its next
// synchronisation: a kernel cannot throw.
#include "common.cuh"

template <class T>
__device__ void ceMaxImpl(const T* logits, float* maxOut, long long rows, int valid, int ldz) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float m = -INFINITY;
        for (int j = threadIdx.x; j < valid; j += blockDim.x) m = fmaxf(m, ld(logits[r * ldz + j]));
        m = blockMax(m, scratch);
        if (threadIdx.x == 0) maxOut[r] = m;
    }
}
extern "C" __global__ void ce_max_f32(const float* logits, float* maxOut, long long rows, int valid, int ldz) {
    ceMaxImpl(logits, maxOut, rows, valid, ldz);
}
extern "C" __global__ void ce_max_bf16(const bf16* logits, float* maxOut, long long rows, int valid, int ldz) {
    ceMaxImpl(logits, maxOut, rows, valid, ldz);
}

template <class T>
__device__ void ceSumsImpl(T* logits, const float* maxIn, float* sums, const int* targets, int* error, int vocabStart,
                           int vocab, long long rows, int valid, int ldz, int storeExp) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        int target = targets[r];
        if (threadIdx.x == 0 && (target < 0 || target >= vocab)) {
            if (atomicCAS(error, 0, 1) == 0) {
                error[1] = (int) r;
                error[2] = target;
                error[3] = vocab;
            }
        }
        int local = target - vocabStart;
        // read the target's logit before the exponentials overwrite it (all threads, then a barrier)
        float zTarget = local >= 0 && local < valid ? ld(logits[r * ldz + local]) : 0.f;
        __syncthreads();
        float shift = maxIn[r];
        float s = 0.f;
        for (int j = threadIdx.x; j < valid; j += blockDim.x) {
            float e = expf(ld(logits[r * ldz + j]) - shift);
            if (storeExp) logits[r * ldz + j] = st<T>(e);
            s += e;
        }
        s = blockSum(s, scratch);
        if (threadIdx.x == 0) {
            sums[2 * r] = s;
            sums[2 * r + 1] = zTarget;
        }
    }
}
extern "C" __global__ void ce_sums_f32(float* logits, const float* maxIn, float* sums, const int* targets, int* error,
                                       int vocabStart, int vocab, long long rows, int valid, int ldz, int storeExp) {
    ceSumsImpl(logits, maxIn, sums, targets, error, vocabStart, vocab, rows, valid, ldz, storeExp);
}
extern "C" __global__ void ce_sums_bf16(bf16* logits, const float* maxIn, float* sums, const int* targets, int* error,
                                        int vocabStart, int vocab, long long rows, int valid, int ldz, int storeExp) {
    ceSumsImpl(logits, maxIn, sums, targets, error, vocabStart, vocab, rows, valid, ldz, storeExp);
}

template <class T>
__device__ void ceFinishImpl(T* logits, const float* maxIn, const float* sums, float* losses, const int* targets, int vocabStart,
                             long long rows, int valid, int ldz, int backward, float gradScale) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float sum = sums[2 * r];
        if (threadIdx.x == 0) losses[r] = maxIn[r] + logf(sum) - sums[2 * r + 1];
        if (!backward) continue;
        float scale = gradScale / sum;  // the logits hold exp(z - max): scaled, they are gradScale * softmax
        int local = targets[r] - vocabStart;
        for (int j = threadIdx.x; j < ldz; j += blockDim.x) {
            float g = j < valid ? ld(logits[r * ldz + j]) * scale - (j == local ? gradScale : 0.f) : 0.f;
            logits[r * ldz + j] = st<T>(g);
        }
    }
}
extern "C" __global__ void ce_finish_f32(float* logits, const float* maxIn, const float* sums, float* losses, const int* targets,
                                         int vocabStart, long long rows, int valid, int ldz, int backward, float gradScale) {
    ceFinishImpl(logits, maxIn, sums, losses, targets, vocabStart, rows, valid, ldz, backward, gradScale);
}
extern "C" __global__ void ce_finish_bf16(bf16* logits, const float* maxIn, const float* sums, float* losses, const int* targets,
                                          int vocabStart, long long rows, int valid, int ldz, int backward, float gradScale) {
    ceFinishImpl(logits, maxIn, sums, losses, targets, vocabStart, rows, valid, ldz, backward, gradScale);
}
