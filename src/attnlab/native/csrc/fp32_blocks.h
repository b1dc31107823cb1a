/* The fp32 building blocks of the native attention kernels (attention_fp32.c per document, window_fp32.c per
 * Swin window): a register-blocked micro-kernel for the small products, a 16 x 16 block transpose and one softmax
 * row, all on AVX-512F + FMA. Static, so each kernel file inlines its own copy. */
#ifndef ATTNLAB_FP32_BLOCKS_H
#define ATTNLAB_FP32_BLOCKS_H

#include "kernels.h"

#define MR 6 /* rows per register block: MR x 4 accumulators of 16 floats use 24 of the 32 registers */

/* The micro-kernel: for rows r < nrows,
 *   c[r * ldc + (0 : 16 NV)] = alpha[r] * sum_{k < kn} a_r[k * aks] * b[k * ldb + (0 : 16 NV)],
 * a_r = a + r * ars (rows past nrows repeat the last one; their results are dropped). A's elements are
 * broadcast from any stride pattern, so the same kernel forms A B, A^T B (ars = 1, aks = row stride)
 * and, with B = K^T packed, A K^T. NV (1..4) is a compile-time constant: the MR x NV accumulators stay in
 * registers. */
static inline __attribute__((always_inline)) void micro(const float *a, int64_t ars, int64_t aks, int kn,
                                                        const float *b, int64_t ldb, float *c, int64_t ldc,
                                                        int nrows, const float *alpha, const int NV) {
    const float *ar[MR];
    for (int r = 0; r < MR; r++) ar[r] = a + (r < nrows ? r : nrows - 1) * ars;
    __m512 acc[MR][4];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    int64_t off = 0;
    for (int k = 0; k < kn; k++, off += aks, b += ldb) {
        __m512 bv[4];
        for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + 16 * v);
        for (int r = 0; r < MR; r++) {
            __m512 x = _mm512_set1_ps(ar[r][off]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < nrows; r++) {
        __m512 al = _mm512_set1_ps(alpha[r]);
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(c + r * ldc + 16 * v, _mm512_mul_ps(acc[r][v], al));
    }
}

/* c (nrows x n, n % 16 == 0) = alpha * A (nrows x kn, strides ars, aks) @ B (kn x n, row stride ldb). */
static void rows_product(const float *a, int64_t ars, int64_t aks, int kn, const float *b, int64_t ldb, int n,
                         float *c, int64_t ldc, int nrows, const float *alpha) {
    int j = 0;
    for (; j + 64 <= n; j += 64) micro(a, ars, aks, kn, b + j, ldb, c + j, ldc, nrows, alpha, 4);
    switch ((n - j) / 16) {
    case 3: micro(a, ars, aks, kn, b + j, ldb, c + j, ldc, nrows, alpha, 3); break;
    case 2: micro(a, ars, aks, kn, b + j, ldb, c + j, ldc, nrows, alpha, 2); break;
    case 1: micro(a, ars, aks, kn, b + j, ldb, c + j, ldc, nrows, alpha, 1); break;
    default: break;
    }
}

/* dst[d * lp + j] = src[j * st + d] for rows j < len, zero for len <= j < lp (16 x 16 blocks; lp % 16 == 0). */
static void transpose_f32(const float *src, int64_t st, int len, int dh, int lp, float *dst) {
    for (int j0 = 0; j0 < lp; j0 += 16)
        for (int d0 = 0; d0 < dh; d0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = j0 + i < len ? _mm512_loadu_ps(src + (int64_t)(j0 + i) * st + d0) : _mm512_setzero_ps();
            transpose16(r);
            for (int d = 0; d < 16; d++) _mm512_storeu_ps(dst + (int64_t)(d0 + d) * lp + j0, r[d]);
        }
}

/* Softmax numerator of one score row in place: s[j] <- 2^((s[j] - max) mult) for j < valid, 0 for
 * valid <= j < width; returns the sum and stores max(s[0:valid]) in *row_max. */
static float softmax_row_f32(float *s, int valid, int width, float mult, float *row_max) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= valid; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    __mmask16 tail = first_n(valid - j);
    if (tail) mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_maskz_loadu_ps(tail, s + j));
    *row_max = _mm512_reduce_max_ps(mx);
    __m512 m = _mm512_set1_ps(mult), off = _mm512_set1_ps(*row_max * mult), sum = _mm512_setzero_ps();
    for (j = 0; j < width; j += 16) {
        __mmask16 keep = first_n(valid - j), in = first_n(width - j);
        __m512 e = _mm512_maskz_mov_ps(keep, exp2_poly(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(keep, s + j), m, off), 1));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(s + j, in, e);
    }
    return _mm512_reduce_add_ps(sum);
}

#endif
