// The emulated driver's memory: device allocations (NaN-filled, in a table that every copy and memset is
// checked against), pinned host memory, and copies with CUDA's pageable/pinned semantics.
#include "driver_state.h"

using namespace drv;

namespace {

enum Kind { H2D, D2H, D2D };

CUresult copy(void* dst, const void* src, size_t bytes, Kind kind, CUstream stream, bool async) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) {
        return r;
    }
    if (bytes == 0) {
        return CUDA_SUCCESS;
    }
    if ((kind != H2D && !rangeOk(src, bytes)) || (kind != D2H && !rangeOk(dst, bytes))) {
        emu::report("memcpy of " + std::to_string(bytes) + " bytes from " + hex(src) + " to " + hex(dst)
                    + " is outside the live device allocations");
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUstream_st* s = resolve(stream);
    if (kind == H2D && !(async && isPinned(src, bytes))) {
        // pageable source (or a synchronous call): CUDA stages it before returning
        auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*) src, (const unsigned char*) src + bytes);
        r = emu::enqueue(s, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
    } else {
        r = emu::enqueue(s, [dst, src, bytes] { std::memcpy(dst, src, bytes); });
    }
    if (r != CUDA_SUCCESS) {
        return r;
    }
    bool sync = !async || (kind == D2H && !isPinned(dst, bytes));
    return sync ? syncStream(s) : CUDA_SUCCESS;
}

template <class T>
CUresult memset(CUdeviceptr dst, T value, size_t n, CUstream stream, bool async) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) {
        return r;
    }
    void* p = reinterpret_cast<void*>(dst);
    if (n > 0 && !rangeOk(p, n * sizeof(T))) {
        emu::report("memset of " + std::to_string(n * sizeof(T)) + " bytes at " + hex(p) + " is outside the live device allocations");
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUstream_st* s = resolve(stream);
    r = emu::enqueue(s, [p, value, n] {
        T* t = static_cast<T*>(p);
        for (size_t i = 0; i < n; i++) {
            t[i] = value;
        }
    });
    return r != CUDA_SUCCESS || async ? r : syncStream(s);
}


}  // namespace

extern "C" {

CUresult cuMemGetInfo_v2(size_t* freeBytes, size_t* total) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    std::lock_guard<std::mutex> lock(gMu);
    *total = gMemoryPerDevice;
    *freeBytes = gMemoryPerDevice - gUsed[tlCurrent->device];
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    size_t rounded = (bytes + 255) / 256 * 256;
    int dev = tlCurrent->device;
    {
        std::lock_guard<std::mutex> lock(gMu);
        if (gUsed[dev] + rounded > gMemoryPerDevice) {
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        gUsed[dev] += rounded;
    }
    void* m = std::aligned_alloc(256, rounded);
    if (m == nullptr) {
        std::lock_guard<std::mutex> lock(gMu);
        gUsed[dev] -= rounded;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    std::memset(m, 0xff, rounded);  // NaN in every float format: reads of unwritten memory show
    std::lock_guard<std::mutex> lock(gMu);
    gDeviceAllocs[reinterpret_cast<uintptr_t>(m)] = Allocation{bytes, dev};
    *p = reinterpret_cast<CUdeviceptr>(m);
    return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    if (!gInitialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (p == 0) return CUDA_SUCCESS;
    // cuMemFree synchronises with the device, as the real call does
    if (tlCurrent != nullptr) cuCtxSynchronize();
    std::lock_guard<std::mutex> lock(gMu);
    auto it = gDeviceAllocs.find((uintptr_t) p);
    if (it == gDeviceAllocs.end()) {
        emu::report("cuMemFree of " + hex(reinterpret_cast<void*>(p)) + ", which is not the start of a live allocation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    gUsed[it->second.device] -= (it->second.bytes + 255) / 256 * 256;
    gDeviceAllocs.erase(it);
    std::free(reinterpret_cast<void*>(p));
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned /*flags*/) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    void* m = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (m == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
    std::lock_guard<std::mutex> lock(gMu);
    gPinned[reinterpret_cast<uintptr_t>(m)] = bytes;
    *p = m;
    return CUDA_SUCCESS;
}

CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }

CUresult cuMemFreeHost(void* p) {
    std::lock_guard<std::mutex> lock(gMu);
    if (gPinned.erase(reinterpret_cast<uintptr_t>(p)) == 0) return CUDA_ERROR_INVALID_VALUE;
    std::free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return copy((void*) d, h, n, H2D, nullptr, false); }
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return copy(h, (void*) d, n, D2H, nullptr, false); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return copy((void*) d, (void*) s, n, D2D, nullptr, false); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, CUstream s) { return copy((void*) d, h, n, H2D, s, true); }
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, CUstream s) { return copy(h, (void*) d, n, D2H, s, true); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s2, size_t n, CUstream s) { return copy((void*) d, (void*) s2, n, D2D, s, true); }

struct CUDA_MEMCPY2D {
    size_t srcXInBytes, srcY;
    int srcMemoryType;
    const void* srcHost;
    CUdeviceptr srcDevice;
    void* srcArray;
    size_t srcPitch;
    size_t dstXInBytes, dstY;
    int dstMemoryType;
    void* dstHost;
    CUdeviceptr dstDevice;
    void* dstArray;
    size_t dstPitch;
    size_t WidthInBytes, Height;
};

CUresult cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D* c, CUstream stream) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    if (c->WidthInBytes == 0 || c->Height == 0) return CUDA_SUCCESS;
    if (c->srcMemoryType != 2 || c->dstMemoryType != 2 || c->WidthInBytes > c->srcPitch || c->WidthInBytes > c->dstPitch) {
        return CUDA_ERROR_INVALID_VALUE;  // only device-to-device 2D copies are used (and emulated)
    }
    const char* src = reinterpret_cast<const char*>(c->srcDevice) + c->srcY * c->srcPitch + c->srcXInBytes;
    char* dst = reinterpret_cast<char*>(c->dstDevice) + c->dstY * c->dstPitch + c->dstXInBytes;
    size_t srcSpan = (c->Height - 1) * c->srcPitch + c->WidthInBytes;
    size_t dstSpan = (c->Height - 1) * c->dstPitch + c->WidthInBytes;
    if (!rangeOk(src, srcSpan) || !rangeOk(dst, dstSpan)) {
        emu::report("2D copy outside the live device allocations");
        return CUDA_ERROR_INVALID_VALUE;
    }
    size_t w = c->WidthInBytes, h = c->Height, sp = c->srcPitch, dp = c->dstPitch;
    return emu::enqueue(resolve(stream), [=] {
        for (size_t i = 0; i < h; i++) std::memmove(dst + i * dp, src + i * sp, w);
    });
}

CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D* c) {
    CUresult r = cuMemcpy2DAsync_v2(c, nullptr);
    return r != CUDA_SUCCESS ? r : syncStream(tlCurrent->defaultStream);
}

CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset<unsigned char>(d, v, n, nullptr, false); }
CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset<unsigned short>(d, v, n, nullptr, false); }
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) { return memset<unsigned>(d, v, n, nullptr, false); }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset<unsigned char>(d, v, n, s, true); }
CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { return memset<unsigned short>(d, v, n, s, true); }
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, CUstream s) { return memset<unsigned>(d, v, n, s, true); }

}  // extern "C"
