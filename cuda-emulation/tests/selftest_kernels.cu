// Kernels with planted bugs (and one correct reduction) for the emulation's self-test: the emulation must
// report what a GPU would get wrong or hang on.

extern "C" __global__ void selftest_block_sum(const float* x, float* out, int n) {
    __shared__ float partial[256];
    float v = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
    partial[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int) threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = partial[0];
    float w = __shfl_xor_sync(0xffffffffu, v, 1);  // a full-warp shuffle: fine
    (void) w;
}

// thread 0 exits before a barrier the others wait at: a hang on a GPU
extern "C" __global__ void selftest_divergent_barrier(float* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1.f;
}

// half a warp shuffles while the other half exited: undefined on a GPU
extern "C" __global__ void selftest_divergent_shuffle(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float) threadIdx.x, 1);
}

// missing __syncthreads between the write and the reads of shared memory: the result depends on the order
// the threads run in, so it is right in one order and wrong in the other
extern "C" __global__ void selftest_missing_barrier(float* out) {
    __shared__ float value;
    if (threadIdx.x == 0) value = 42.f;
    out[threadIdx.x] = value;
}
