// The emulated CUDA runtime (libcudart.so.13). Sparkatron drives the GPU through the driver API (JCuda);
// JavaCPP's CUDA presets load the runtime with every preset, so this library exists for linking, with
// the few queries a preset may make. Everything else comes from generated stubs (cudaErrorNotSupported).
extern "C" {
int cudaRuntimeGetVersion(int* v) {
    *v = 13000;
    return 0;
}
int cudaDriverGetVersion(int* v) {
    *v = 13000;
    return 0;
}
const char* cudaGetErrorString(int e) { return e == 0 ? "no error" : "emulated CUDA runtime error"; }
const char* cudaGetErrorName(int e) { return e == 0 ? "cudaSuccess" : "cudaErrorNotSupported"; }
}
