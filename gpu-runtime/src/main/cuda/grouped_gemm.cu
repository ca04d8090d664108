// Grouped GEMMs of the mixture-of-experts layer: one GEMM per expert over the rows [offsets[g], offsets[g+1])
// of a dispatch buffer, with the offsets read on the device (the host never learns the routing). fp32 inputs
// and accumulation, 64 x 64 output tiles, 16-deep K steps through shared memory, 256 threads each computing a
// 4 x 4 strided micro-tile. This first version uses no tensor cores (docs/moe.md says what a faster one needs).
// Every output element has one writer and a fixed summation order: deterministic.
//
// Grids are 1-D (the device launches 1-D grids); a block index decodes to (group, column tile, row-tile lane),
// and a lane loops over its group's row tiles, since no host code knows how many rows a group has.
#include "common.cuh"

#define GG_TILE 64
#define GG_K 16
#define GG_THREADS 256

/**
 * One 64 x 64 tile of C[M, N] = op(A) op(B) (+ beta C): A is [M, K] (row-major, lda) or, with TA, stored as
 * [K, M]; B is [K, N] or, with TB, stored as [N, K]. Element (m, n) of the tile is accumulated over k in
 * increasing order by one thread.
 */
template <bool TA, bool TB>
__device__ void gemmTile(int M, int N, int K, const float* A, long long lda, const float* B, long long ldb, float* C,
                         long long ldc, float beta, int m0, int n0, float (*As)[GG_TILE + 1], float (*Bs)[GG_TILE + 1]) {
    int tid = threadIdx.x;
    int tx = tid % 16, ty = tid / 16;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < K; k0 += GG_K) {
        for (int q = 0; q < GG_TILE * GG_K / GG_THREADS; q++) {
            int l = tid + q * GG_THREADS;
            int mm, kk;
            if (TA) { kk = l / GG_TILE; mm = l % GG_TILE; } else { mm = l / GG_K; kk = l % GG_K; }
            int gm = m0 + mm, gk = k0 + kk;
            As[kk][mm] = gm < M && gk < K ? (TA ? A[(long long) gk * lda + gm] : A[(long long) gm * lda + gk]) : 0.f;
            int nn;
            if (TB) { nn = l / GG_K; kk = l % GG_K; } else { kk = l / GG_TILE; nn = l % GG_TILE; }
            int gn = n0 + nn;
            gk = k0 + kk;
            Bs[kk][nn] = gn < N && gk < K ? (TB ? B[(long long) gn * ldb + gk] : B[(long long) gk * ldb + gn]) : 0.f;
        }
        __syncthreads();
        for (int kk = 0; kk < GG_K; kk++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        for (int j = 0; j < 4; j++) {
            int n = n0 + tx + 16 * j;
            if (n >= N) continue;
            float* c = C + (long long) m * ldc + n;
            *c = beta == 0.f ? acc[i][j] : acc[i][j] + beta * *c;
        }
    }
}

/** out rows of group g = x rows of g times w[g]^T: C[rows, outF] with A = x [rows, in], B = w[g] stored [outF, in]. */
extern "C" __global__ void grouped_forward(float* out, const float* x, const float* w, const int* offsets, int groups, int in,
                                          int outF, int lanes) {
    __shared__ float As[GG_K][GG_TILE + 1];
    __shared__ float Bs[GG_K][GG_TILE + 1];
    int colTiles = (outF + GG_TILE - 1) / GG_TILE;
    for (long long blk = blockIdx.x; blk < (long long) groups * colTiles * lanes; blk += gridDim.x) {
        int g = (int) (blk / ((long long) colTiles * lanes));
        int rest = (int) (blk % ((long long) colTiles * lanes));
        int ct = rest / lanes, lane = rest % lanes;
        int r0 = offsets[g], rows = offsets[g + 1] - r0;
        for (int m0 = lane * GG_TILE; m0 < rows; m0 += lanes * GG_TILE) {
            gemmTile<false, true>(rows, outF, in, x + (long long) r0 * in, in, w + (long long) g * outF * in, in,
                                  out + (long long) r0 * outF, outF, 0.f, m0, ct * GG_TILE, As, Bs);
        }
    }
}

/** dx rows of group g = dout rows of g times w[g]: C[rows, in] with A = dout [rows, outF], B = w[g] [outF, in]. */
extern "C" __global__ void grouped_backward_dx(float* dx, const float* dout, const float* w, const int* offsets, int groups, int in,
                                              int outF, int lanes) {
    __shared__ float As[GG_K][GG_TILE + 1];
    __shared__ float Bs[GG_K][GG_TILE + 1];
    int colTiles = (in + GG_TILE - 1) / GG_TILE;
    for (long long blk = blockIdx.x; blk < (long long) groups * colTiles * lanes; blk += gridDim.x) {
        int g = (int) (blk / ((long long) colTiles * lanes));
        int rest = (int) (blk % ((long long) colTiles * lanes));
        int ct = rest / lanes, lane = rest % lanes;
        int r0 = offsets[g], rows = offsets[g + 1] - r0;
        for (int m0 = lane * GG_TILE; m0 < rows; m0 += lanes * GG_TILE) {
            gemmTile<false, false>(rows, in, outF, dout + (long long) r0 * outF, outF, w + (long long) g * outF * in, in,
                                   dx + (long long) r0 * in, in, 0.f, m0, ct * GG_TILE, As, Bs);
        }
    }
}

/**
 * dw[g] += dout^T x over group g's rows: C[outF, in] with A = dout stored [rows, outF] (transposed), B = x
 * [rows, in]; one block per (group, output tile), the sum over the group's rows in row order. A group without
 * rows leaves dw[g] untouched.
 */
extern "C" __global__ void grouped_backward_dw(float* dw, const float* dout, const float* x, const int* offsets, int groups, int in,
                                              int outF) {
    __shared__ float As[GG_K][GG_TILE + 1];
    __shared__ float Bs[GG_K][GG_TILE + 1];
    int rowTiles = (outF + GG_TILE - 1) / GG_TILE, colTiles = (in + GG_TILE - 1) / GG_TILE;
    for (long long blk = blockIdx.x; blk < (long long) groups * rowTiles * colTiles; blk += gridDim.x) {
        int g = (int) (blk / ((long long) rowTiles * colTiles));
        int rest = (int) (blk % ((long long) rowTiles * colTiles));
        int rt = rest / colTiles, ct = rest % colTiles;
        int r0 = offsets[g], rows = offsets[g + 1] - r0;
        if (rows <= 0) continue;
        gemmTile<true, false>(outF, in, rows, dout + (long long) r0 * outF, outF, x + (long long) r0 * in, in,
                              dw + (long long) g * outF * in, in, 1.f, rt * GG_TILE, ct * GG_TILE, As, Bs);
    }
}
