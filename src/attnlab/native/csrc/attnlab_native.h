/* The interface of attnlab's native libraries: every function Python calls through ctypes, declared once.
 *
 * attnlab/native/interface.py reads this file when it loads a library and sets each function's ctypes
 * argument and result types from the prototypes below, and every .c file that defines one of them
 * includes this header (through kernels.h), so the compiler checks each definition against its
 * declaration. A disagreement between C and Python is thus a compile error or a failing test
 * (tests/native/test_interface.py) instead of a call with misplaced arguments.
 *
 * ATTNLAB_API(family) exports a function and names the library that holds it. Each family is a separate
 * shared library, compiled with the instruction-set flags of the CPU features it uses and loaded only
 * where the CPU has them (attnlab/native/build.py), so one family's missing feature or rejected compiler
 * flag leaves the others usable. The libraries are built with -fvisibility=hidden: a function not
 * declared here is not exported at all.
 *
 * The Python parser reads prototypes of this simple form only, and raises on anything else: a result of
 * void, int, int64_t or float; named parameters that are pointers (to anything) or int, int64_t or float;
 * `(void)` for none. It reads the feature bits of enum attnlab_cpu_feature the same way.
 */
#ifndef ATTNLAB_NATIVE_H
#define ATTNLAB_NATIVE_H

#include <stdint.h>

typedef uint16_t bf16; /* bfloat16: the upper half of an IEEE float32 */

#define ATTNLAB_API(family) __attribute__((visibility("default")))

/* ---- probe (probe.c): compiled without instruction-set flags, so it runs on every x86-64 CPU ---------- */

/* CPU features the kernels use, as bits of attnlab_cpu_features(). */
enum attnlab_cpu_feature {
    ATTNLAB_CPU_AVX512F = 1 << 0,
    ATTNLAB_CPU_AVX512BW = 1 << 1,
    ATTNLAB_CPU_AVX512VL = 1 << 2,
    ATTNLAB_CPU_AVX512_BF16 = 1 << 3,
    ATTNLAB_CPU_FMA = 1 << 4,
    ATTNLAB_CPU_AMX_BF16 = 1 << 5, /* AMX-TILE and AMX-BF16, with Linux's permission to use the tiles */
};

/* The attnlab_cpu_feature bits that this CPU has and the OS saves the registers of. */
ATTNLAB_API(probe) int attnlab_cpu_features(void);

/* ---- attention_bf16 (common.c, forward.c, backward.c): AVX-512 BF16, AMX-BF16 where present ---------- */

/* y[i] = 2^x[i] for x[i] <= 0 with the kernels' polynomial: the bf16 kernels' (fp32 = 0) or the fp32
 * kernels' (fp32 = 1). For the accuracy tests. */
ATTNLAB_API(attention_bf16) void attnlab_native_exp2(const float *x, float *y, int64_t n, int fp32);

ATTNLAB_API(attention_bf16) int attnlab_attend_docs_bf16(
    const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out, const int64_t *qs, const int64_t *ks,
    const int64_t *vs, const int64_t *os, const int64_t *docs, int64_t ndocs, int heads, int kv_heads, int dh,
    float scale, int causal, int use_amx, float *lse, const int64_t *ls, int nthreads);

ATTNLAB_API(attention_bf16) int attnlab_attend_docs_bf16_backward(
    const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *o, const bf16 *dout, const float *lse, bf16 *dq,
    bf16 *dk, bf16 *dv, const int64_t *qs, const int64_t *ks, const int64_t *vs, const int64_t *os,
    const int64_t *dos, const int64_t *ls, const int64_t *dqs, const int64_t *dks, const int64_t *dvs,
    const int64_t *docs, int64_t ndocs, int heads, int kv_heads, int dh, float scale, int causal, int nthreads);

/* ---- attention_fp32 (attention_fp32.c, window_fp32.c): AVX-512F and FMA ------------------------------ */

ATTNLAB_API(attention_fp32) int attnlab_attend_docs_f32(
    const float *q, const float *k, const float *v, float *out, const int64_t *qs, const int64_t *ks,
    const int64_t *vs, const int64_t *os, const int64_t *docs, int64_t ndocs, int heads, int kv_heads, int dh,
    float scale, int causal, float *lse, const int64_t *ls, int nthreads);

ATTNLAB_API(attention_fp32) int attnlab_attend_docs_f32_backward(
    const float *q, const float *k, const float *v, const float *dout, const float *lse, float *dq, float *dk,
    float *dv, const int64_t *qs, const int64_t *ks, const int64_t *vs, const int64_t *dos, const int64_t *ls,
    const int64_t *dqs, const int64_t *dks, const int64_t *dvs, const int64_t *docs, int64_t ndocs, int heads,
    int kv_heads, int dh, float scale, int causal, int nthreads);

/* Swin window attention (window_fp32.c): fp32 arithmetic; q, k, v, out and the gradients fp32 (bf = 0) or
 * bf16 (bf = 1). */
ATTNLAB_API(attention_fp32) int attnlab_attend_windows_f32(
    const void *q, const void *k, const void *v, void *out, const int64_t *qs, const int64_t *ks,
    const int64_t *vs, const int64_t *os, const int64_t *order, const float *bias, int64_t bhs, int64_t bws,
    float *lse, const int64_t *ls, int64_t batch, int64_t windows, int n, int heads, int kv_heads, int dh, int bf,
    float scale, int nthreads);

ATTNLAB_API(attention_fp32) int attnlab_attend_windows_f32_backward(
    const void *q, const void *k, const void *v, const void *dout, const float *lse, void *dq, void *dk,
    void *dv, const int64_t *qs, const int64_t *ks, const int64_t *vs, const int64_t *dos, const int64_t *ls,
    const int64_t *dqs, const int64_t *dks, const int64_t *dvs, const int64_t *order, const float *bias,
    int64_t bhs, int64_t bws, float *dbias, int64_t dbias_size, int64_t batch, int64_t windows, int n, int heads,
    int kv_heads, int dh, int bf, float scale, int nthreads);

/* ---- pointwise (pointwise.c): LayerNorm and bias + GELU, AVX-512 BF16 -------------------------------- */

ATTNLAB_API(pointwise) int attnlab_layer_norm_fwd(const float *x, const bf16 *add, float *sum_out, int64_t rows,
                                                  int d, const float *w, const float *b, float eps, bf16 *y,
                                                  float *mean, float *rstd, int nthreads);

ATTNLAB_API(pointwise) int attnlab_layer_norm_bwd(const float *x, const bf16 *dy, const float *mean,
                                                  const float *rstd, const float *w, const float *dres, bf16 *dadd,
                                                  int64_t rows, int d, float *dx, float *dw, float *db,
                                                  int nthreads);

ATTNLAB_API(pointwise) int attnlab_bias_gelu_fwd(const bf16 *h, const float *bias, int64_t rows, int n, bf16 *out,
                                                 bf16 *slope, int nthreads);

ATTNLAB_API(pointwise) int attnlab_bias_gelu_bwd(const bf16 *slope, const bf16 *dout, int64_t rows, int n, bf16 *dh,
                                                 float *dbias, int nthreads);

ATTNLAB_API(pointwise) int attnlab_gelu_slope_fp32(const float *a, int64_t count, float *out, float *slope,
                                                   int nthreads);

ATTNLAB_API(pointwise) int attnlab_gelu_bwd_fp32(const float *slope, float *g, int64_t rows, int n, float *dbias,
                                                 int nthreads);

/* ---- transpose (transpose.c): bf16 matrix transpose, AVX-512F --------------------------------------- */

ATTNLAB_API(transpose) int attnlab_transpose_bf16(const bf16 *src, int64_t rows, int64_t cols, int64_t ss, bf16 *dst,
                                                  int64_t ds, int nthreads);

/* ---- decode (skinny.c, decode_attention.c): the linear layers and attention of a generation step ------ */

/* y (M, N) = x (M, K) W^T + bias from W packed in 16-column panels (attnlab/native/skinny.py). */
ATTNLAB_API(decode) int attnlab_skinny_f32(const float *x, int64_t M, int64_t K, int64_t xs, const float *P,
                                           int64_t N, const float *bias, float *y, int64_t ys, int nthreads);

ATTNLAB_API(decode) int attnlab_skinny_bf16(const bf16 *x, int64_t M, int64_t K, int64_t xs, const bf16 *P,
                                            int64_t N, const float *bias, bf16 *y, int64_t ys, int nthreads);

/* out (B, H, T, dh) = softmax(scale q k^T + mask) v for few queries T against S cached keys
 * (attnlab/native/decode.py); strides are (batch, head, token); mask (fp32, -inf = masked) may be NULL. */
ATTNLAB_API(decode) int attnlab_decode_attention_f32(
    const float *q, const float *k, const float *v, float *out, const int64_t *qs, const int64_t *ks,
    const int64_t *vs, const int64_t *os, const float *mask, const int64_t *ms, int64_t batch, int heads,
    int kv_heads, int queries, int keys, int dh, float scale, int nthreads);

ATTNLAB_API(decode) int attnlab_decode_attention_bf16(
    const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out, const int64_t *qs, const int64_t *ks,
    const int64_t *vs, const int64_t *os, const float *mask, const int64_t *ms, int64_t batch, int heads,
    int kv_heads, int queries, int keys, int dh, float scale, int nthreads);

#endif
