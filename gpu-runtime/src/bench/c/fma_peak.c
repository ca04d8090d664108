/*
 * A core's single-precision FMA peak: 12 independent chains of 256-bit fused multiply-adds (enough to cover
 * the FMA latency on both of a Zen 3 core's FMA pipes), 16 FLOPs each. Not part of the build; the ceiling the
 * CPU step's GEMM rates are read against (docs/benchmarks.md, Issue 23, fourth and fifth parts).
 *
 *   gcc -O2 -mavx2 -mfma -o /tmp/fma_peak gpu-runtime/src/bench/c/fma_peak.c
 *   taskset -c 0 /tmp/fma_peak                                       # one core alone
 *   (taskset -c 0 /tmp/fma_peak & taskset -c 1 /tmp/fma_peak & wait)   # two cores together
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

int main(void) {
    __m256 acc[12];
    __m256 x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
    for (int i = 0; i < 12; i++) {
        acc[i] = _mm256_set1_ps((float) i);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long iterations = 200000000L;
    for (long n = 0; n < iterations; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) {
            acc[i] = _mm256_fmadd_ps(acc[i], x, y);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    float r = 0; /* the chains' results, printed so the loop is not optimised away */
    for (int i = 0; i < 12; i++) {
        r += acc[i][0];
    }
    printf("%.1f GFLOP/s per core (checksum %g)\n", iterations * 12.0 * 16 / s / 1e9, r);
    return 0;
}
