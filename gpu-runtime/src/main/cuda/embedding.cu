// Token embeddings (a table may hold only ids [vocabStart, vocabStart + held): vocab-parallel shards),
// learned positions and rotary embeddings. Backward kernels accumulate; each output element is owned by
// one thread that sums its contributions in row order, so results are deterministic without atomics.
#include "common.cuh"

template <class T>
__device__ void embeddingForwardImpl(T* out, const int* tokens, const T* table, int vocabStart, int held, long long n, int c) {
    GRID_STRIDE(i, n * c) {
        long long r = i / c;
        int j = (int) (i % c);
        int id = tokens[r] - vocabStart;
        out[i] = id >= 0 && id < held ? table[(long long) id * c + j] : st<T>(0.f);
    }
}
extern "C" __global__ void embedding_forward_f32(float* out, const int* tokens, const float* table, int vocabStart, int held,
                                                 long long n, int c) {
    embeddingForwardImpl(out, tokens, table, vocabStart, held, n, c);
}
extern "C" __global__ void embedding_forward_bf16(bf16* out, const int* tokens, const bf16* table, int vocabStart, int held,
                                                  long long n, int c) {
    embeddingForwardImpl(out, tokens, table, vocabStart, held, n, c);
}

/**
 * dtable[tokens[r] - vocabStart, j] += dout[r, j]. Thread j of the grid owns column j and walks the rows in
 * order: no two threads write one element.
 */
template <class T>
__device__ void embeddingBackwardImpl(float* dtable, const T* dout, const int* tokens, int vocabStart, int held, long long n, int c) {
    GRID_STRIDE(j, c) {
        for (long long r = 0; r < n; r++) {
            int id = tokens[r] - vocabStart;
            if (id >= 0 && id < held) dtable[(long long) id * c + j] += ld(dout[r * c + j]);
        }
    }
}
extern "C" __global__ void embedding_backward_f32(float* dtable, const float* dout, const int* tokens, int vocabStart, int held,
                                                  long long n, int c) {
    embeddingBackwardImpl(dtable, dout, tokens, vocabStart, held, n, c);
}
extern "C" __global__ void embedding_backward_bf16(float* dtable, const bf16* dout, const int* tokens, int vocabStart, int held,
                                                   long long n, int c) {
    embeddingBackwardImpl(dtable, dout, tokens, vocabStart, held, n, c);
}

/**
 * The position of token row r of sequences of t rows: positions[r % t] (context parallelism's global
 * positions of a rank's rows), or r % t where positions is null.
 */
__device__ __forceinline__ long long positionOf(const int* positions, long long r, int t) {
    return positions ? positions[r % t] : r % t;
}

/** x[i] += wpe[pos(firstRow + i)]. */
template <class T>
__device__ void addPositionsImpl(T* x, const T* wpe, const int* positions, long long firstRow, long long rows, int t, int c) {
    GRID_STRIDE(i, rows * c) {
        long long r = i / c;
        int j = (int) (i % c);
        long long p = positionOf(positions, firstRow + r, t);
        x[i] = st<T>(ld(x[i]) + ld(wpe[p * c + j]));
    }
}
extern "C" __global__ void add_positions_f32(float* x, const float* wpe, const int* positions, long long firstRow, long long rows,
                                             int t, int c) {
    addPositionsImpl(x, wpe, positions, firstRow, rows, t, c);
}
extern "C" __global__ void add_positions_bf16(bf16* x, const bf16* wpe, const int* positions, long long firstRow, long long rows,
                                              int t, int c) {
    addPositionsImpl(x, wpe, positions, firstRow, rows, t, c);
}

/**
 * dwpe[pos(r), j] += dx[i, j] for the block's rows i (r = firstRow + i), in row order. Thread (s, j) owns
 * sequence slot s (rows with r % t == s) and column j; slots have distinct positions, so no two threads write
 * one element.
 */
template <class T>
__device__ void positionsBackwardImpl(float* dwpe, const T* dx, const int* positions, long long firstRow, long long rows, int t,
                                      int c) {
    GRID_STRIDE(i, (long long) t * c) {
        long long slot = i / c;
        int j = (int) (i % c);
        long long first = ((slot - firstRow) % t + t) % t;  // first local row in this slot
        long long at = positionOf(positions, slot, t) * c + j;
        float s = dwpe[at];
        for (long long r = first; r < rows; r += t) s += ld(dx[r * c + j]);
        dwpe[at] = s;
    }
}
extern "C" __global__ void positions_backward_f32(float* dwpe, const float* dx, const int* positions, long long firstRow,
                                                  long long rows, int t, int c) {
    positionsBackwardImpl(dwpe, dx, positions, firstRow, rows, t, c);
}
extern "C" __global__ void positions_backward_bf16(float* dwpe, const bf16* dx, const int* positions, long long firstRow,
                                                   long long rows, int t, int c) {
    positionsBackwardImpl(dwpe, dx, positions, firstRow, rows, t, c);
}

/**
 * Rotary embedding in place on the q and k heads of packed qkv rows (Hugging Face rotate-half): for pair j
 * of a head at position pos(row) (positions[row % t], or row % t where positions is null), (x1, x2) ->
 * (x1 c - x2 s, x2 c + x1 s); inverse negates s.
 */
template <class T>
__device__ void ropeImpl(T* qkv, const float* cosT, const float* sinT, const int* positions, long long rows, int t, int heads,
                         int kvHeads, int hd,
                         int inverse) {
    int half = hd / 2;
    int width = (heads + 2 * kvHeads) * hd;
    long long pairs = rows * (heads + kvHeads) * half;
    GRID_STRIDE(i, pairs) {
        long long r = i / ((long long) (heads + kvHeads) * half);
        int rem = (int) (i % ((long long) (heads + kvHeads) * half));
        int h = rem / half, j = rem % half;
        long long pos = positionOf(positions, r, t);
        float cs = cosT[pos * half + j];
        float sn = inverse ? -sinT[pos * half + j] : sinT[pos * half + j];
        long long base = r * width + (long long) h * hd;
        float x1 = ld(qkv[base + j]), x2 = ld(qkv[base + half + j]);
        qkv[base + j] = st<T>(x1 * cs - x2 * sn);
        qkv[base + half + j] = st<T>(x2 * cs + x1 * sn);
    }
}
extern "C" __global__ void rope_f32(float* qkv, const float* cosT, const float* sinT, const int* positions, long long rows, int t,
                                    int heads,
                                    int kvHeads, int hd, int inverse) {
    ropeImpl(qkv, cosT, sinT, positions, rows, t, heads, kvHeads, hd, inverse);
}
extern "C" __global__ void rope_bf16(bf16* qkv, const float* cosT, const float* sinT, const int* positions, long long rows, int t,
                                     int heads,
                                     int kvHeads, int hd, int inverse) {
    ropeImpl(qkv, cosT, sinT, positions, rows, t, heads, kvHeads, hd, inverse);
}
