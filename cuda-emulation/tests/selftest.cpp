// The emulation's self-test, run by build.sh: a correct block reduction gives the right sum, and each
// planted bug is reported: a divergent barrier and a divergent shuffle fail the launch (sticky
// CUDA_ERROR_LAUNCH_FAILED, as a GPU fault), a copy past an allocation is refused, fresh memory reads as
// NaN, and a missing __syncthreads gives a wrong result in one of the two thread orders (argument "reverse"
// when SPARKATRON_CUDA_EMU_ORDER=reverse). Exits non-zero naming the first check that did not hold.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "emu_runtime.h"

extern "C" {
CUresult cuInit(unsigned);
CUresult cuDeviceGetCount(int*);
CUresult cuDevicePrimaryCtxRetain(CUcontext*, int);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr*, size_t);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void*, size_t);
CUresult cuMemcpyDtoH_v2(void*, CUdeviceptr, size_t);
CUresult cuModuleLoadData(CUmodule*, const void*);
CUresult cuModuleGetFunction(CUfunction*, CUmodule, const char*);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void**, void**);
CUresult cuStreamSynchronize(CUstream);
CUresult cuStreamCreate(CUstream*, unsigned);
}

static int failures = 0;
static void expect(bool ok, const std::string& what) {
    if (!ok) {
        std::fprintf(stderr, "cuda-emulation selftest FAILED: %s\n", what.c_str());
        failures++;
    }
}

int main(int argc, char** argv) {
    bool reverse = argc > 1 && std::strcmp(argv[1], "reverse") == 0;
    cuInit(0);
    int devices = 0;
    cuDeviceGetCount(&devices);
    expect(devices >= 3, "three emulated devices (SPARKATRON_CUDA_EMU_DEVICES=3)");
    const char* image = "selftest_block_sum selftest_divergent_barrier selftest_divergent_shuffle selftest_missing_barrier";
    auto onDevice = [&](int d, CUmodule* m, CUstream* s) {
        CUcontext c;
        cuDevicePrimaryCtxRetain(&c, d);
        cuCtxSetCurrent(c);
        cuStreamCreate(s, 0);
        cuModuleLoadData(m, image);
    };
    CUmodule m;
    CUstream s;
    onDevice(0, &m, &s);
    CUfunction sum, missing;
    expect(cuModuleGetFunction(&sum, m, "selftest_block_sum") == CUDA_SUCCESS, "kernel lookup");
    CUfunction absent;
    expect(cuModuleGetFunction(&absent, m, "not_in_the_image") == CUDA_ERROR_NOT_FOUND, "a kernel missing from the image is not found");
    int n = 1000;
    std::vector<float> h(n);
    double ref = 0;
    for (int i = 0; i < n; i++) {
        h[i] = (float) ((i % 13) - 6) * 0.25f;
        ref += h[i];
    }
    CUdeviceptr x, out;
    cuMemAlloc_v2(&x, 4 * n);
    cuMemAlloc_v2(&out, 4 * 256);
    float fresh = 0;
    cuMemcpyDtoH_v2(&fresh, out, 4);
    expect(std::isnan(fresh), "fresh device memory reads as NaN");
    cuMemcpyHtoD_v2(x, h.data(), 4 * n);
    expect(cuMemcpyHtoD_v2(x, h.data(), 4 * n + 4) == CUDA_ERROR_INVALID_VALUE, "a copy past the allocation is refused");
    void* args[] = {&x, &out, &n};
    expect(cuLaunchKernel(sum, 1, 1, 1, 256, 1, 1, 0, s, args, nullptr) == CUDA_SUCCESS, "launch");
    expect(cuStreamSynchronize(s) == CUDA_SUCCESS, "correct reduction runs");
    float got = 0;
    cuMemcpyDtoH_v2(&got, out, 4);
    expect(std::fabs(got - ref) < 1e-3, "block sum " + std::to_string(got) + " == " + std::to_string(ref));

    cuModuleGetFunction(&missing, m, "selftest_missing_barrier");
    void* a2[] = {&out};
    cuLaunchKernel(missing, 1, 1, 1, 64, 1, 1, 0, s, a2, nullptr);
    cuStreamSynchronize(s);
    std::vector<float> r(64);
    cuMemcpyDtoH_v2(r.data(), out, 4 * 64);
    bool allRight = true;
    for (float v : r) allRight &= v == 42.f;
    expect(reverse ? !allRight : allRight, std::string("a missing __syncthreads ") + (reverse ? "shows in reverse order" : "hides in forward order"));

    // the faults poison a context (sticky), so each gets a device of its own
    for (int d = 1; d <= 2; d++) {
        CUmodule md;
        CUstream sd;
        onDevice(d, &md, &sd);
        CUfunction f;
        cuModuleGetFunction(&f, md, d == 1 ? "selftest_divergent_barrier" : "selftest_divergent_shuffle");
        CUdeviceptr o;
        cuMemAlloc_v2(&o, 4 * 64);
        void* a3[] = {&o};
        cuLaunchKernel(f, 1, 1, 1, 64, 1, 1, 0, sd, a3, nullptr);
        expect(cuStreamSynchronize(sd) == CUDA_ERROR_LAUNCH_FAILED,
               d == 1 ? "a divergent __syncthreads fails the launch" : "a divergent shuffle fails the launch");
    }
    if (failures == 0) std::printf("cuda-emulation selftest passed (%s thread order)\n", reverse ? "reverse" : "forward");
    return failures == 0 ? 0 : 1;
}
