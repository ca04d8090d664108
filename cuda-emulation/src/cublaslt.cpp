// The emulated cuBLASLt (libcublasLt.so.13): descriptors, a one-answer heuristic and cublasLtMatmul on the
// CPU, queued on the caller's stream. Semantics follow cuBLAS: column-major matrices, D = alpha op(A) op(B)
// + beta C (+ bias[row] with CUBLASLT_EPILOGUE_BIAS), strided batches. Inputs are read in their storage
// type and, for the fast compute types, rounded to TF32/BF16 first; products accumulate in double and the
// result is rounded to D's type (cuBLASLt accumulates in fp32 in an unknown order: tests allow for that).
// FP8 needs A transposed and B not ("TN"), as on Hopper; other unsupported combinations return
// CUBLAS_STATUS_NOT_SUPPORTED from the heuristic.
#include "emu_runtime.h"
#include "sparkatron_emu_halfbits.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

enum : int { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum : int { R32F = 0, R64F = 1, R16F = 2, R16BF = 14, R8F_E4M3 = 28, R8F_E5M2 = 29 };
enum : int { COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69, FAST_16F = 74, FAST_16BF = 75, FAST_TF32 = 77 };

struct Desc {
    int compute = COMPUTE_32F, scaleType = R32F, pointerMode = 0, transA = 0, transB = 0, epilogue = 1;
    const void* bias = nullptr;
    int biasType = -1;
    const float* aScale = nullptr;
    const float* bScale = nullptr;
    const float* dScale = nullptr;
    float* amaxD = nullptr;
};

struct Layout {
    int type = R32F, order = 0;
    uint64_t rows = 0, cols = 0;
    int64_t ld = 0;
    int batch = 1;
    int64_t stride = 0;
};

struct Pref {
    uint64_t workspace = 0;
};

float half2f(uint16_t h) { return sparkatron_half_to_float(h); }
uint16_t f2half(float f) { return sparkatron_float_to_half(f); }
float bf2f(uint16_t h) { return sparkatron_bf16_to_float(h); }
uint16_t f2bf(float f) { return sparkatron_float_to_bf16(f); }

float roundTf32(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    if ((b & 0x7f800000u) == 0x7f800000u) return f;
    b += 0xfffu + ((b >> 13) & 1u);
    b &= ~0x1fffu;
    std::memcpy(&f, &b, 4);
    return f;
}

float fp8ToFloat(uint8_t v, bool e4m3) {
    int sign = v >> 7;
    int eb = e4m3 ? 4 : 5, mb = e4m3 ? 3 : 2, bias = e4m3 ? 7 : 15;
    int e = (v >> mb) & ((1 << eb) - 1), m = v & ((1 << mb) - 1);
    double r;
    if (e4m3 && e == 15 && m == 7) return NAN;
    if (!e4m3 && e == 31) return m ? NAN : (sign ? -INFINITY : INFINITY);
    if (e == 0) r = std::ldexp((double) m, 1 - bias - mb);
    else r = std::ldexp(1.0 + m / (double) (1 << mb), e - bias);
    return (float) (sign ? -r : r);
}

size_t typeBytes(int t) {
    switch (t) {
        case R32F: return 4;
        case R64F: return 8;
        case R16F: case R16BF: return 2;
        case R8F_E4M3: case R8F_E5M2: return 1;
        default: return 0;
    }
}

float load(const void* p, int type, size_t i) {
    switch (type) {
        case R32F: return static_cast<const float*>(p)[i];
        case R64F: return (float) static_cast<const double*>(p)[i];
        case R16F: return half2f(static_cast<const uint16_t*>(p)[i]);
        case R16BF: return bf2f(static_cast<const uint16_t*>(p)[i]);
        case R8F_E4M3: return fp8ToFloat(static_cast<const uint8_t*>(p)[i], true);
        default: return fp8ToFloat(static_cast<const uint8_t*>(p)[i], false);
    }
}

void store(void* p, int type, size_t i, float v) {
    switch (type) {
        case R32F: static_cast<float*>(p)[i] = v; break;
        case R64F: static_cast<double*>(p)[i] = v; break;
        case R16F: static_cast<uint16_t*>(p)[i] = f2half(v); break;
        case R16BF: static_cast<uint16_t*>(p)[i] = f2bf(v); break;
        default: throw emu::Failure("cublasLtMatmul: FP8 output is not emulated", CUDA_ERROR_NOT_SUPPORTED);
    }
}

template <class T>
int setAttr(T& field, const void* buf, size_t size) {
    if (size != sizeof(T)) return INVALID_VALUE;
    std::memcpy(&field, buf, sizeof(T));
    return OK;
}

bool supported(const Desc& d, const Layout& a, const Layout& b, const Layout& dl) {
    bool fp8 = a.type == R8F_E4M3 || a.type == R8F_E5M2 || b.type == R8F_E4M3 || b.type == R8F_E5M2;
    if (fp8 && !(d.transA == 1 && d.transB == 0)) return false;  // Hopper FP8: "TN" only
    if (typeBytes(a.type) == 0 || typeBytes(b.type) == 0 || typeBytes(dl.type) == 0) return false;
    if (a.order != 0 || b.order != 0 || dl.order != 0) return false;  // column-major only
    return d.scaleType == R32F;
}

}  // namespace

extern "C" {

int cublasLtCreate(void** h) {
    *h = new int(1);
    return OK;
}
int cublasLtDestroy(void* h) {
    delete static_cast<int*>(h);
    return OK;
}
size_t cublasLtGetVersion() { return 130100; }

int cublasLtMatmulDescCreate(Desc** d, int compute, int scaleType) {
    *d = new Desc();
    (*d)->compute = compute;
    (*d)->scaleType = scaleType;
    return OK;
}
int cublasLtMatmulDescDestroy(Desc* d) {
    delete d;
    return OK;
}
int cublasLtMatmulDescSetAttribute(Desc* d, int attr, const void* buf, size_t size) {
    switch (attr) {
        case 0: return setAttr(d->compute, buf, size);
        case 1: return setAttr(d->scaleType, buf, size);
        case 2: return setAttr(d->pointerMode, buf, size);
        case 3: return setAttr(d->transA, buf, size);
        case 4: return setAttr(d->transB, buf, size);
        case 7: return setAttr(d->epilogue, buf, size);
        case 8: return setAttr(d->bias, buf, size);
        case 17: return setAttr(d->aScale, buf, size);
        case 18: return setAttr(d->bScale, buf, size);
        case 20: return setAttr(d->dScale, buf, size);
        case 21: return setAttr(d->amaxD, buf, size);
        case 26: return setAttr(d->biasType, buf, size);
        default: emu::report("cublasLtMatmulDescSetAttribute " + std::to_string(attr) + " is not emulated"); return NOT_SUPPORTED;
    }
}

int cublasLtMatrixLayoutCreate(Layout** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    *l = new Layout();
    (*l)->type = type;
    (*l)->rows = rows;
    (*l)->cols = cols;
    (*l)->ld = ld;
    return OK;
}
int cublasLtMatrixLayoutDestroy(Layout* l) {
    delete l;
    return OK;
}
int cublasLtMatrixLayoutSetAttribute(Layout* l, int attr, const void* buf, size_t size) {
    switch (attr) {
        case 0: return setAttr(l->type, buf, size);
        case 1: return setAttr(l->order, buf, size);
        case 2: return setAttr(l->rows, buf, size);
        case 3: return setAttr(l->cols, buf, size);
        case 4: return setAttr(l->ld, buf, size);
        case 5: return setAttr(l->batch, buf, size);
        case 6: return setAttr(l->stride, buf, size);
        default: return NOT_SUPPORTED;
    }
}

int cublasLtMatmulPreferenceCreate(Pref** p) {
    *p = new Pref();
    return OK;
}
int cublasLtMatmulPreferenceDestroy(Pref* p) {
    delete p;
    return OK;
}
int cublasLtMatmulPreferenceSetAttribute(Pref* p, int attr, const void* buf, size_t size) {
    if (attr == 1) return setAttr(p->workspace, buf, size);
    return OK;
}

struct HeuristicResult {
    uint64_t algo[8];
    size_t workspaceSize;
    int state;
    float waves;
    int reserved[4];
};

int cublasLtMatmulAlgoGetHeuristic(void* h, Desc* d, Layout* a, Layout* b, Layout* c, Layout* dl, Pref*, int requested,
                                   HeuristicResult* out, int* returned) {
    if (h == nullptr) return NOT_INITIALIZED;
    if (requested < 1) return INVALID_VALUE;
    if (!supported(*d, *a, *b, *dl) || c->rows != dl->rows || c->cols != dl->cols) {
        *returned = 0;
        return NOT_SUPPORTED;
    }
    std::memset(out, 0, sizeof(HeuristicResult));
    out->algo[0] = 1;
    out->waves = 1.0f;
    *returned = 1;
    return OK;
}

int cublasLtMatmul(void* h, Desc* desc, const void* alpha, const void* A, Layout* al, const void* B, Layout* bl,
                   const void* beta, const void* C, Layout* cl, void* D, Layout* dl, const void* /*algo*/,
                   void* workspace, size_t workspaceBytes, CUstream stream) {
    if (h == nullptr) return NOT_INITIALIZED;
    if (!supported(*desc, *al, *bl, *dl)) return NOT_SUPPORTED;
    if (desc->pointerMode != 0) return NOT_SUPPORTED;  // host scalars only
    // The H200's cuBLASLt (CUDA 13) refuses FP8 scale pointers that are not 16-byte aligned (NOT_SUPPORTED from
    // cublasLtMatmul, the heuristic having accepted them; seen with PyTorch's _scaled_mm there too)
    for (const float* scale : {desc->aScale, desc->bScale, desc->dScale}) {
        if (scale != nullptr && reinterpret_cast<uintptr_t>(scale) % 16 != 0) {
            emu::report("cublasLtMatmul: an FP8 scale pointer is not 16-byte aligned (cuBLASLt returns NOT_SUPPORTED)");
            return NOT_SUPPORTED;
        }
    }
    Desc d = *desc;
    Layout a = *al, b = *bl, c = *cl, o = *dl;
    uint64_t m = o.rows, n = o.cols;
    uint64_t k = d.transA ? a.rows : a.cols;
    uint64_t am = d.transA ? a.cols : a.rows, bk = d.transB ? b.cols : b.rows, bn = d.transB ? b.rows : b.cols;
    if (am != m || bk != k || bn != n || c.rows != m || c.cols != n || a.ld < (int64_t) a.rows
        || b.ld < (int64_t) b.rows || o.ld < (int64_t) o.rows || c.ld < (int64_t) c.rows) {
        emu::report("cublasLtMatmul: inconsistent shapes");
        return INVALID_VALUE;
    }
    float al0 = *static_cast<const float*>(alpha), be0 = *static_cast<const float*>(beta);
    int compute = d.compute;
    int biasType = d.biasType >= 0 ? d.biasType : o.type;
    bool bias = d.epilogue == 4;
    if (d.epilogue != 1 && !bias) return NOT_SUPPORTED;
    CUresult r = emu::enqueue(stream, [=] {
        auto span = [](const Layout& l) { return (size_t) ((l.cols - 1) * l.ld + l.rows) * typeBytes(l.type); };
        for (int bi = 0; bi < o.batch; bi++) {
            const char* pa = static_cast<const char*>(A) + (size_t) (bi * a.stride) * typeBytes(a.type);
            const char* pb = static_cast<const char*>(B) + (size_t) (bi * b.stride) * typeBytes(b.type);
            const char* pc = static_cast<const char*>(C) + (size_t) (bi * c.stride) * typeBytes(c.type);
            char* pd = static_cast<char*>(D) + (size_t) (bi * o.stride) * typeBytes(o.type);
            emu::check_device_range(pa, span(a), "cublasLtMatmul A");
            emu::check_device_range(pb, span(b), "cublasLtMatmul B");
            if (be0 != 0) emu::check_device_range(pc, span(c), "cublasLtMatmul C");
            emu::check_device_range(pd, span(o), "cublasLtMatmul D");
            if (bias) emu::check_device_range(d.bias, m * typeBytes(biasType), "cublasLtMatmul bias");
            float sa = d.aScale ? *d.aScale : 1.f, sb = d.bScale ? *d.bScale : 1.f;
            auto in = [&](const char* p, int type, size_t idx) {
                float v = load(p, type, idx);
                if (compute == FAST_TF32 && type == R32F) v = roundTf32(v);
                if (compute == FAST_16BF && type == R32F) v = bf2f(f2bf(v));
                if (compute == FAST_16F && type == R32F) v = half2f(f2half(v));
                return v;
            };
            // gather op(A) rows and op(B) columns once
            std::vector<float> opA(m * k), opB(k * n);
            for (uint64_t i = 0; i < m; i++)
                for (uint64_t l = 0; l < k; l++)
                    opA[i * k + l] = in(pa, a.type, d.transA ? i * a.ld + l : l * a.ld + i);
            for (uint64_t j = 0; j < n; j++)
                for (uint64_t l = 0; l < k; l++)
                    opB[j * k + l] = in(pb, b.type, d.transB ? l * b.ld + j : j * b.ld + l);
            for (uint64_t j = 0; j < n; j++) {
                for (uint64_t i = 0; i < m; i++) {
                    double s = 0;
                    const float* x = &opA[i * k];
                    const float* y = &opB[j * k];
                    for (uint64_t l = 0; l < k; l++) s += (double) x[l] * y[l];
                    double v = al0 * sa * sb * s;
                    if (be0 != 0) v += be0 * (double) load(pc, c.type, j * c.ld + i);
                    if (bias) v += load(d.bias, biasType, i);
                    store(pd, o.type, j * o.ld + i, (float) v);
                }
            }
        }
    });
    (void) workspace;
    (void) workspaceBytes;
    return r == CUDA_SUCCESS ? OK : 13;
}

}  // extern "C"
