/* Skinny matrix products for decoding: y (M, N) = x (M, K) W^T (+ bias) with few rows (M <= 64), the
 * linear layers of one generation step.
 *
 * Why: at a decoding step a linear layer multiplies a handful of token rows by the whole weight. oneDNN /
 * MKL spend ~50 us on an (8, 256) x (256, 1024) fp32 product on this 2-core CPU (~10 GFLOP/s), far below
 * both the FMA peak and the cache bandwidth, so a 6 + 6 layer decoder step is mostly GEMM call overhead.
 * Here the weight is given pre-packed in panels of 16 output columns, P (ceil(N/16), K, 16) (fp32) or
 * (ceil(N/16), K/2, 16, 2) (bf16: pairs of k, the operand layout of VDPBF16PS), zero-padded past N. A block
 * of up to 8 rows and two panels keeps 16 accumulators of 16 output columns in registers; each step over k
 * loads two panel vectors and broadcasts one x value (fp32) or one pair (bf16) per row: no horizontal sums.
 * Panels are split over the OpenMP threads.
 *
 * Sums run in fp32 in k order (the bf16 kernel: pairs of exact bf16 products, as VDPBF16PS); bf16 results
 * are rounded to nearest even. Layout contract (checked in Python): the last stride of x and y is 1, K is
 * even for bf16, bias (fp32) has N entries or is NULL.
 */
#include <omp.h>

#include "kernels.h"

#define MB 8 /* rows per register block */

/* Rows [0, mb) x panels [p, p + np) (np = 1 or 2), fp32. */
static inline __attribute__((always_inline)) void block_f32(int mb, int np, const float *x, int64_t xs,
                                                            const float *P, int64_t K, int64_t p, float *acc) {
    __m512 a[MB][2];
    for (int m = 0; m < mb; m++)
        for (int j = 0; j < np; j++) a[m][j] = _mm512_setzero_ps();
    const float *p0 = P + p * K * 16, *p1 = p0 + K * 16;
    for (int64_t k = 0; k < K; k++) {
        __m512 w0 = _mm512_loadu_ps(p0 + k * 16), w1 = np > 1 ? _mm512_loadu_ps(p1 + k * 16) : w0;
        for (int m = 0; m < mb; m++) {
            __m512 xv = _mm512_set1_ps(x[m * xs + k]);
            a[m][0] = _mm512_fmadd_ps(xv, w0, a[m][0]);
            if (np > 1) a[m][1] = _mm512_fmadd_ps(xv, w1, a[m][1]);
        }
    }
    for (int m = 0; m < mb; m++)
        for (int j = 0; j < np; j++) _mm512_storeu_ps(acc + (m * 2 + j) * 16, a[m][j]);
}

/* The same for bf16 x (rows of K bf16) and bf16 pair panels. */
static inline __attribute__((always_inline)) void block_bf16(int mb, int np, const bf16 *x, int64_t xs,
                                                             const bf16 *P, int64_t K, int64_t p, float *acc) {
    __m512 a[MB][2];
    for (int m = 0; m < mb; m++)
        for (int j = 0; j < np; j++) a[m][j] = _mm512_setzero_ps();
    const bf16 *p0 = P + p * K * 16, *p1 = p0 + K * 16;
    for (int64_t k = 0; k < K; k += 2) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(p0 + k * 16);
        __m512bh w1 = np > 1 ? (__m512bh)_mm512_loadu_si512(p1 + k * 16) : w0;
        for (int m = 0; m < mb; m++) {
            uint32_t pair;
            memcpy(&pair, x + m * xs + k, 4);
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)pair);
            a[m][0] = _mm512_dpbf16_ps(a[m][0], xv, w0);
            if (np > 1) a[m][1] = _mm512_dpbf16_ps(a[m][1], xv, w1);
        }
    }
    for (int m = 0; m < mb; m++)
        for (int j = 0; j < np; j++) _mm512_storeu_ps(acc + (m * 2 + j) * 16, a[m][j]);
}

/* Bias and store of the accumulators of rows [m0, m0 + mb), panels [p, p + np) into fp32 or bf16 y. */
static void store(const float *acc, int mb, int np, int64_t m0, int64_t p, int64_t N, const float *bias,
                  float *yf, bf16 *yb, int64_t ys) {
    for (int j = 0; j < np; j++) {
        int64_t n0 = (p + j) * 16;
        int64_t left = N - n0 < 16 ? N - n0 : 16;
        __mmask16 mask = (__mmask16)((1u << left) - 1u);
        __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
        for (int m = 0; m < mb; m++) {
            __m512 v = _mm512_add_ps(_mm512_loadu_ps(acc + (m * 2 + j) * 16), b);
            if (yf)
                _mm512_mask_storeu_ps(yf + (m0 + m) * ys + n0, mask, v);
            else
                _mm256_mask_storeu_epi16(yb + (m0 + m) * ys + n0, mask, (__m256i)_mm512_cvtneps_pbh(v));
        }
    }
}

#define DISPATCH(KERNEL, mb, np, ...)                                                                          \
    switch (mb * 2 + np - 1) {                                                                                 \
    case 2: KERNEL(1, 1, __VA_ARGS__); break; case 3: KERNEL(1, 2, __VA_ARGS__); break;                        \
    case 4: KERNEL(2, 1, __VA_ARGS__); break; case 5: KERNEL(2, 2, __VA_ARGS__); break;                        \
    case 6: KERNEL(3, 1, __VA_ARGS__); break; case 7: KERNEL(3, 2, __VA_ARGS__); break;                        \
    case 8: KERNEL(4, 1, __VA_ARGS__); break; case 9: KERNEL(4, 2, __VA_ARGS__); break;                        \
    case 10: KERNEL(5, 1, __VA_ARGS__); break; case 11: KERNEL(5, 2, __VA_ARGS__); break;                      \
    case 12: KERNEL(6, 1, __VA_ARGS__); break; case 13: KERNEL(6, 2, __VA_ARGS__); break;                      \
    case 14: KERNEL(7, 1, __VA_ARGS__); break; case 15: KERNEL(7, 2, __VA_ARGS__); break;                      \
    case 16: KERNEL(8, 1, __VA_ARGS__); break; default: KERNEL(8, 2, __VA_ARGS__); break;                      \
    }

/* Both kernels: pairs of panels over threads, row blocks inside (the panel pair stays in cache). */
#define SKINNY(BLOCK, XT)                                                                                      \
    int64_t panels = (N + 15) / 16, pairs = (panels + 1) / 2;                                                  \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                                        \
    for (int64_t q = 0; q < pairs; q++) {                                                                      \
        float acc[MB * 2 * 16];                                                                                \
        int64_t p = 2 * q;                                                                                     \
        int np = panels - p >= 2 ? 2 : 1;                                                                      \
        for (int64_t m0 = 0; m0 < M; m0 += MB) {                                                               \
            int mb = M - m0 < MB ? (int)(M - m0) : MB;                                                         \
            const XT *xr = x + m0 * xs;                                                                        \
            DISPATCH(BLOCK, mb, np, xr, xs, P, K, p, acc)                                                      \
            store(acc, mb, np, m0, p, N, bias, YF, YB, ys);                                                    \
        }                                                                                                      \
    }                                                                                                          \
    return 0;

int attnlab_skinny_f32(const float *x, int64_t M, int64_t K, int64_t xs, const float *P, int64_t N,
                       const float *bias, float *y, int64_t ys, int nthreads) {
#define YF y
#define YB NULL
    SKINNY(block_f32, float)
#undef YF
#undef YB
}

int attnlab_skinny_bf16(const bf16 *x, int64_t M, int64_t K, int64_t xs, const bf16 *P, int64_t N,
                        const float *bias, bf16 *y, int64_t ys, int nthreads) {
#define YF NULL
#define YB y
    SKINNY(block_bf16, bf16)
#undef YF
#undef YB
}
