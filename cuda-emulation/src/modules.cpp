// The emulated driver's modules and launches: an image (nvcc's fatbin, a cubin or PTX) is bound to the
// CPU-compiled kernel module named by SPARKATRON_CUDA_EMU_KERNELS; a kernel is found only if its name is in
// the image; launches copy the parameters at once and run the grid on the stream's thread (fiber.cpp).
#include "driver_state.h"

using namespace drv;

namespace {

size_t imageSize(const unsigned char* b) {
    uint32_t magic;
    std::memcpy(&magic, b, 4);
    if (magic == 0xBA55ED50u) {  // fatbin: u32 magic, u16 version, u16 header size, u64 payload size
        uint16_t header;
        uint64_t payload;
        std::memcpy(&header, b + 6, 2);
        std::memcpy(&payload, b + 8, 8);
        return header + payload;
    }
    if (std::memcmp(b, "\x7f" "ELF", 4) == 0) {  // cubin: section headers end the file
        uint64_t shoff;
        uint16_t shentsize, shnum;
        std::memcpy(&shoff, b + 0x28, 8);
        std::memcpy(&shentsize, b + 0x3a, 2);
        std::memcpy(&shnum, b + 0x3c, 2);
        return shoff + (size_t) shentsize * shnum;
    }
    return std::strlen(reinterpret_cast<const char*>(b));  // PTX text
}

bool imageNames(const std::string& image, const char* name) {
    size_t len = std::strlen(name);
    for (size_t at = image.find(name); at != std::string::npos; at = image.find(name, at + 1)) {
        char next = at + len < image.size() ? image[at + len] : '\0';
        char prev = at > 0 ? image[at - 1] : '\0';
        bool ident = std::isalnum((unsigned char) next) || next == '_';
        bool identPrev = std::isalnum((unsigned char) prev) || prev == '_';
        if (!ident && !identPrev) {
            return true;
        }
    }
    return false;
}


}  // namespace

extern "C" {

CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    const char* path = std::getenv("SPARKATRON_CUDA_EMU_KERNELS");
    if (path == nullptr) {
        emu::report("SPARKATRON_CUDA_EMU_KERNELS is not set: no CPU-compiled kernel module to stand in for the image");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    std::lock_guard<std::mutex> lock(gMu);
    if (gKernelModule == nullptr) {
        gKernelModule = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (gKernelModule == nullptr) {
            emu::report(std::string("cannot load the CPU kernel module: ") + dlerror());
            return CUDA_ERROR_INVALID_IMAGE;
        }
    }
    auto* table = static_cast<const emu::KernelEntry*>(dlsym(gKernelModule, "sparkatron_emu_kernels"));
    auto* count = static_cast<const int*>(dlsym(gKernelModule, "sparkatron_emu_kernel_count"));
    if (table == nullptr || count == nullptr) {
        emu::report(std::string(path) + " has no sparkatron_emu_kernels table");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    const auto* bytes = static_cast<const unsigned char*>(image);
    auto* mod = new CUmod_st();
    mod->image.assign(reinterpret_cast<const char*>(bytes), imageSize(bytes));
    mod->table = table;
    mod->count = *count;
    *m = mod;
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmodule* m, const void* image, unsigned, void*, void**) { return cuModuleLoadData(m, image); }

CUresult cuModuleUnload(CUmodule m) {
    delete m;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    if (m == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (!imageNames(m->image, name)) {
        return CUDA_ERROR_NOT_FOUND;  // as on a GPU: the image lacks the kernel
    }
    for (int i = 0; i < m->count; i++) {
        if (std::strcmp(m->table[i].name, name) == 0) {
            *f = new CUfunc_st{&m->table[i]};
            return CUDA_SUCCESS;
        }
    }
    emu::report(std::string("kernel ") + name + " is in the image but not in the CPU kernel module");
    return CUDA_ERROR_NOT_FOUND;
}

CUresult cuFuncSetAttribute(CUfunction f, int attrib, int value) {
    if (attrib == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
        f->maxDynamicSmem = value;
        return CUDA_SUCCESS;
    }
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream stream, void** params, void** extra) {
    CUresult r = needContext();
    if (r != CUDA_SUCCESS) return r;
    if (extra != nullptr || (f->entry->nargs > 0 && params == nullptr)) return CUDA_ERROR_INVALID_VALUE;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || gy > 65535 || gz > 65535) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((size_t) bx * by * bz > 1024 || bz > 64) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((int) smem > f->maxDynamicSmem) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // copy the parameter values now: the caller may reuse its memory as soon as the launch returns
    const emu::KernelEntry* e = f->entry;
    auto buf = std::make_shared<std::vector<std::max_align_t>>();
    std::vector<size_t> offsets;
    size_t total = 0;
    for (int i = 0; i < e->nargs; i++) {
        offsets.push_back(total);
        total += (e->sizes[i] + 15) / 16 * 16;
    }
    buf->resize(total / sizeof(std::max_align_t) + 1);
    auto* base = reinterpret_cast<unsigned char*>(buf->data());
    for (int i = 0; i < e->nargs; i++) {
        std::memcpy(base + offsets[i], params[i], e->sizes[i]);
    }
    dim3 grid{gx, gy, gz}, block{bx, by, bz};
    return emu::enqueue(resolve(stream), [e, buf, offsets, grid, block, smem] {
        std::vector<void*> args;
        auto* b = reinterpret_cast<unsigned char*>(buf->data());
        for (size_t off : offsets) args.push_back(b + off);
        emu::run_grid(e, grid, block, smem, args.data());
    });
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case CUDA_ERROR_INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

}  // extern "C"
