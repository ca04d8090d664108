// Round-to-nearest-even conversions between float and the 16-bit formats, shared by the kernel header
// and the emulated cuBLASLt and NCCL.
#pragma once
#include <cstdint>
#include <cstring>

inline float sparkatron_bf16_to_float(uint16_t h) {
    uint32_t b = (uint32_t) h << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

inline uint16_t sparkatron_float_to_bf16(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t) ((b >> 16) | 0x40u);  // quiet NaN
    }
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t) (b >> 16);
}

inline float sparkatron_half_to_float(uint16_t x) {
    uint32_t s = (uint32_t) (x & 0x8000u) << 16;
    uint32_t e = (x >> 10) & 0x1fu;
    uint32_t m = x & 0x3ffu;
    uint32_t b;
    if (e == 0x1f) {
        b = s | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        b = s | ((e + 112u) << 23) | (m << 13);
    } else if (m == 0) {
        b = s;
    } else {  // subnormal: normalise
        int shift = 0;
        while ((m & 0x400u) == 0) {
            m <<= 1;
            shift++;
        }
        b = s | ((uint32_t) (113 - shift) << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

inline uint16_t sparkatron_float_to_half(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    uint32_t s = (b >> 16) & 0x8000u;
    uint32_t a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return (uint16_t) (s | 0x7e00u);
    }
    if (a >= 0x477ff000u) {  // rounds to >= 65520: infinity
        return (uint16_t) (s | 0x7c00u);
    }
    if (a >= 0x38800000u) {  // normal half
        uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);
        return (uint16_t) (s | ((r - 0x38000000u) >> 13));
    }
    if (a > 0x33000000u) {  // subnormal half
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1u))) {
            q++;
        }
        return (uint16_t) (s | q);
    }
    return (uint16_t) s;  // at or below half the smallest subnormal: ties to even give zero
}
