/* libcublas.so.12 for a machine that has only cuBLAS 13 (the GPU test machine's CUDA 13 image).
 *
 * faiss-gpu-cu12 wheels link libcublas.so.12 but call only eight functions whose signatures are
 * the same in cuBLAS 13; each is forwarded to libcublas.so.13, loaded on first use. Used only by
 * benchmarks/gpu/run_on_device.sh; a customer's CUDA 12 install has the real library.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int status_t;
typedef void *handle_t;

static void *cublas13(const char *name) {
    static void *library;
    if (!library) {
        library = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
        if (!library) {
            fprintf(stderr, "cublas12 shim: %s\n", dlerror());
            abort();
        }
    }
    void *symbol = dlsym(library, name);
    if (!symbol) {
        fprintf(stderr, "cublas12 shim: libcublas.so.13 has no %s\n", name);
        abort();
    }
    return symbol;
}

#define FORWARD(name, params, args)                          \
    status_t name params {                                   \
        static status_t(*target) params;                     \
        if (!target) target = (status_t(*) params)cublas13(#name); \
        return target args;                                  \
    }

FORWARD(cublasCreate_v2, (handle_t *h), (h))
FORWARD(cublasDestroy_v2, (handle_t h), (h))
FORWARD(cublasSetStream_v2, (handle_t h, void *stream), (h, stream))
FORWARD(cublasGetMathMode, (handle_t h, int *mode), (h, mode))
FORWARD(cublasSetMathMode, (handle_t h, int mode), (h, mode))
FORWARD(cublasSgemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const void *A,
         int at, int lda, const void *B, int bt, int ldb, const float *beta, void *C, int ct,
         int ldc),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc))
FORWARD(cublasGemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A,
         int at, int lda, const void *B, int bt, int ldb, const void *beta, void *C, int ct,
         int ldc, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A,
         int at, int lda, long long sa, const void *B, int bt, int ldb, long long sb,
         const void *beta, void *C, int ct, int ldc, long long sc, int batches, int compute,
         int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc,
         batches, compute, algo))
