// FP8 kernels (docs/precision.md): amax, casts to E4M3/E5M2 with a per-tensor scale, Transformer Engine's
// scale updates (current and delayed scaling) and the byte transposes cuBLASLt's "TN"-only FP8 GEMM needs
// for the backward. The GEMMs themselves are cuBLASLt's (CudaKernels). Every cast is the bit-exact port of
// org.sparkatron.precision.Fp8Format.encode (CUDA's __nv_cvt_float_to_fp8 with __NV_SATFINITE: round to
// nearest even, saturation to the largest finite value, E4M3 without infinities), written with integer
// operations so nvcc and the CPU emulation compute the same bits on every architecture (sm_80 included,
// which has no FP8 conversion instruction). Arithmetic is IEEE fp32 (no fast math): scales and their
// inverses are the CPU kernels' to the bit.
#include "common.cuh"

#define FP8_FLT_MAX 3.402823466e38f

__device__ __forceinline__ bool fp8Finite(float f) {
    return (__float_as_int(f) & 0x7f800000) != 0x7f800000;
}

/** The FP8 code of f (low 8 bits): E4M3 when e4m3, else E5M2. See Fp8Format.encode. */
__device__ __forceinline__ unsigned char fp8Encode(float f, int e4m3) {
    const unsigned bits = (unsigned) __float_as_int(f);
    const unsigned sign = (bits >> 24) & 0x80u;
    const unsigned abs = bits & 0x7fffffffu;
    if (abs > 0x7f800000u) {  // NaN: E4M3's only NaN code, or E5M2's quiet NaN with the top payload bit
        return (unsigned char) (e4m3 ? (sign | 0x7fu) : (sign | 0x7eu | ((abs >> 21) & 0x3u)));
    }
    const float a = __int_as_float((int) abs);
    const int mantissaBits = e4m3 ? 3 : 2;
    const int bias = e4m3 ? 7 : 15;
    if (a >= (e4m3 ? 448.f : 57344.f)) {  // saturate, infinity included
        return (unsigned char) (sign | (e4m3 ? 0x7eu : 0x7bu));
    }
    if (a < (e4m3 ? 0.015625f : 6.103515625e-05f)) {  // below the smallest normal: multiples of the smallest subnormal
        // a * 2^(bias - 1 + mantissaBits) is exact; rintf rounds half to even
        return (unsigned char) (sign | (unsigned) (int) rintf(a * (e4m3 ? 512.f : 65536.f)));
    }
    const int shift = 23 - mantissaBits;
    unsigned rounded = abs + (1u << (shift - 1)) - 1u + ((abs >> shift) & 1u);  // half to even on the dropped bits
    rounded &= ~((1u << shift) - 1u);
    const unsigned exp = (rounded >> 23) - 127u + (unsigned) bias;
    const unsigned mant = (rounded >> shift) & ((1u << mantissaBits) - 1u);
    return (unsigned char) (sign | (exp << mantissaBits) | mant);
}

/** The value of an FP8 code (exact in fp32). */
__device__ __forceinline__ float fp8Decode(unsigned code, int e4m3) {
    const int mantissaBits = e4m3 ? 3 : 2, exponentBits = e4m3 ? 4 : 5, bias = e4m3 ? 7 : 15;
    const int e = (int) ((code >> mantissaBits) & ((1u << exponentBits) - 1u));
    const int m = (int) (code & ((1u << mantissaBits) - 1u));
    float v;
    if (e4m3 && e == 15 && m == 7) {
        v = __int_as_float(0x7fc00000);
    } else if (!e4m3 && e == 31) {
        v = m == 0 ? __int_as_float(0x7f800000) : __int_as_float(0x7fc00000);
    } else if (e == 0) {
        v = (float) m * (e4m3 ? 0.001953125f : 1.52587890625e-05f);  // m * smallest subnormal: exact
    } else {
        v = __int_as_float((e - bias + 127) << 23) * (1.f + (float) m / (float) (1 << mantissaBits));
    }
    return (code & 0x80u) ? -v : v;
}

/** amax[slot] = max(amax[slot], max |x[0, n)|): NaN elements are ignored, as fmaxf does. amax[slot] >= 0. */
extern "C" __global__ void fp8_amax_f32(const float* x, long long n, float* amax, int slot) {
    __shared__ float scratch[32];
    float m = 0.f;
    GRID_STRIDE(i, n) {
        const float a = fabsf(x[i]);
        if (a > m) m = a;  // NaN compares false
    }
    m = blockMax(m, scratch);
    // non-negative floats order as their bit patterns: an integer maximum is the float maximum, in any block order
    if (threadIdx.x == 0 && m > 0.f) atomicMax(reinterpret_cast<int*>(amax + slot), __float_as_int(m));
}

/** dst[i] = the FP8 code of src[i] * scale[slot] (the product in fp32). */
extern "C" __global__ void fp8_cast_codes(unsigned char* dst, const float* src, long long n, const float* scale, int slot,
                                          int e4m3) {
    const float s = scale[slot];
    GRID_STRIDE(i, n) dst[i] = fp8Encode(src[i] * s, e4m3);
}

/** dst[i] = the value of that code, in F32 (the CPU device's FP8 storage; for tests on the CUDA device). */
extern "C" __global__ void fp8_cast_values(float* dst, const float* src, long long n, const float* scale, int slot, int e4m3) {
    const float s = scale[slot];
    GRID_STRIDE(i, n) dst[i] = fp8Decode(fp8Encode(src[i] * s, e4m3), e4m3);
}

/** Current scaling of slots [from, from + count): scale = fp8Max / amax (1 where amax is 0 or not finite). */
extern "C" __global__ void fp8_scale_from_amax(const float* amax, float* scale, float* scaleInv, int from, int count,
                                               float fp8Max) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= count) return;
    const int j = from + t;
    const float am = amax[j];
    float sc = 1.f;
    if (am > 0.f && fp8Finite(am)) {
        sc = fp8Max / am;
        if (!fp8Finite(sc)) sc = FP8_FLT_MAX;
    }
    scale[j] = sc;
    scaleInv[j] = 1.f / sc;
}

/**
 * Delayed scaling of slots [from, from + count) of the history [len, slots] (row 0: this pass's amaxes): the
 * history rolls (entry i takes entry i + 1, the last takes this pass's amax, row 0 is cleared) when this pass
 * recorded an amax; amax = the window's maximum (useMax) or this pass's; scale = scaledMax / amax where amax is
 * positive and finite, else unchanged. One thread per slot.
 */
extern "C" __global__ void fp8_delayed_scaling(float* h, float* scale, float* scaleInv, int len, int slots, int from, int count,
                                               int useMax, float scaledMax) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= count) return;
    const int j = from + t;
    const float last = h[j];
    float amax = 0.f;
    if (last != 0.f) {
        for (int i = 0; i < len; i++) {
            const float a = i < len - 1 ? h[(long long) (i + 1) * slots + j] : last;
            amax = fmaxf(amax, a);
            h[(long long) i * slots + j] = i > 0 ? a : 0.f;
        }
    }
    if (!useMax) amax = last;
    float sc = fp8Finite(amax) && amax > 0.f ? scaledMax / amax : scale[j];
    if (!fp8Finite(sc)) sc = FP8_FLT_MAX;
    scale[j] = sc;
    scaleInv[j] = 1.f / sc;
}

/** dst[c, r] = src[r, c] for a row-major [rows, cols] byte matrix (FP8 codes). */
extern "C" __global__ void fp8_transpose(unsigned char* dst, const unsigned char* src, long long rows, int cols) {
    GRID_STRIDE(i, rows * cols) {
        const long long r = i / cols, c = i % cols;
        dst[c * rows + r] = src[i];
    }
}
