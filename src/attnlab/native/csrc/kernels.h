/* Exact softmax attention for packed short documents, bf16 in and out, on x86-64 CPUs with AMX-BF16
 * (Sapphire Rapids and later; forward and backward) or AVX-512 BF16 (Cooper Lake, Zen 4; forward).
 *
 * Built from common.c, forward.c and backward.c by attnlab/native/build.py (gcc -fopenmp, no torch headers)
 * into the attention_bf16 library, called through ctypes on the data pointers of torch tensors; the other
 * kernel families (attention_fp32.c, pointwise.c, transpose.c) share the inline helpers below. The exported
 * functions are declared in attnlab_native.h.
 * Semantics are those of attnlab.attention.engines.documents.per_document_attention:
 * every (document, query head) pair is one softmax attention, out = softmax(scale * q k^T [+ causal]) v.
 *
 * Why: PyTorch's CPU flash kernel reaches ~30 GFLOP/s on encoder-sized work (documents of ~80 tokens,
 * head size 32), because its tiling overhead is sized for long sequences. Here each (document, head) is
 * done whole, in cache: K is packed pairwise-transposed and V pairwise-interleaved (the B-operand layout
 * of both TDPBF16PS and VDPBF16PS), scores are fp32 sums of exact bf16 products, the softmax runs in fp32
 * with a degree-5 exp2 polynomial (rel. error <= 3.3e-6), probabilities are rounded to bf16 for P @ V (as
 * flash kernels do) and each output row is divided by its fp32 sum at the end.
 *
 * Layout contract (checked in Python): the last (head-dim) stride of q, k, v and out is 1, the token
 * strides are even; head_dim is a multiple of 16 (of 32 for the AMX path) and at most 256; docs are given
 * as (batch row, first token, length).
 */
#ifndef ATTNLAB_KERNELS_H
#define ATTNLAB_KERNELS_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attnlab_native.h"

#define INTERNAL __attribute__((visibility("hidden"))) /* shared between the files, not exported */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* ldtilecfg / sttilecfg with the whole 64-byte configuration as the memory operand. (GCC 12's
 * _tile_loadconfig declares only 8 bytes read, so the stores that build a configuration get removed
 * as dead and the instruction faults on garbage.) */
static inline void tile_load_config(const tile_config *c) { __asm__ volatile("ldtilecfg %0" ::"m"(*c)); }
static inline void tile_store_config(tile_config *c) { __asm__ volatile("sttilecfg %0" : "=m"(*c)); }

static inline __m512bh bcast_pair(const bf16 *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return (__m512bh)_mm512_set1_epi32(w);
}

/* 2^x for x <= 0 (x >= -125 after the clamp): 2^n * p(f), n = round(x), f in [-0.5, 0.5], p the Taylor
 * polynomial of 2^f of degree 5 (relative error <= 3.3e-6, far below bf16's 3.9e-3 rounding of P; the bf16
 * kernels) or, with `fp32` (a compile-time constant), of degree 6 (<= 1.2e-7, fp32's own rounding). */
static inline __attribute__((always_inline)) __m512 exp2_poly(__m512 x, const int fp32) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-125.0f)); /* 2^(n + f) >= 2^-125.5: no denormals (slow) */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.3333558e-3f); /* ln(2)^k / k! */
    if (fp32) p = _mm512_fmadd_ps(_mm512_set1_ps(1.5403530e-4f), f, p);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022651f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69314718f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 exp2_neg(__m512 x) { return exp2_poly(x, 0); }

/* The (document, head) work item `it` of a docs table (rows: batch row, first token, length), item =
 * doc * heads + head, with kv head = head / group: sets *b, *t0, *h, *hk and returns the length. */
static inline int doc_item(const int64_t *docs, int64_t it, int heads, int group, int64_t *b, int64_t *t0, int *h,
                           int *hk) {
    const int64_t *d = docs + (it / heads) * 3;
    *h = (int)(it % heads), *hk = *h / group, *b = d[0], *t0 = d[1];
    return (int)d[2];
}

/* Longest document of the (batch row, first token, length) table. */
static inline int max_doc_len(const int64_t *docs, int64_t ndocs) {
    int64_t longest = 0;
    for (int64_t i = 0; i < ndocs; i++)
        if (docs[i * 3 + 2] > longest) longest = docs[i * 3 + 2];
    return (int)longest;
}

/* In-register transpose of a 16 x 16 block: r[i] row i in, column i out. Pairs of rows interleaved,
 * then quadruples (r[4g + c] holds column 4 L + c of rows 4g..4g+3 in 128-bit lane L), then lanes. */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {
        r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        __m512 x0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), x1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        __m512 x2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), x3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        t[c] = _mm512_shuffle_f32x4(x0, x2, 0x88), t[c + 8] = _mm512_shuffle_f32x4(x0, x2, 0xDD);
        t[c + 4] = _mm512_shuffle_f32x4(x1, x3, 0x88), t[c + 12] = _mm512_shuffle_f32x4(x1, x3, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* dst (len x dh elements of `size` bytes, contiguous) = rows [0, len) of src (row stride st elements): one
 * sweep over a strided head slice with its cache misses in flight together, so the products, gathers and
 * tile loads that read it several times afterwards hit the cache. */
static inline void copy_rows(const void *src, int64_t st, int len, int dh, size_t size, void *dst) {
    for (int i = 0; i < len; i++)
        memcpy((char *)dst + (size_t)i * dh * size, (const char *)src + i * st * (int64_t)size, (size_t)dh * size);
}

/* Element offset of (batch row b, head h, token t) in a tensor with (batch, head, token) strides s. */
static inline int64_t at(const int64_t *s, int64_t b, int64_t h, int64_t t) { return b * s[0] + h * s[1] + t * s[2]; }

static inline __mmask16 first_n(int n) { /* lanes [0, n) of 16 (n clamped to [0, 16]) */
    return n >= 16 ? 0xFFFF : n > 0 ? (__mmask16)((1u << n) - 1) : 0;
}

/* Offsets, in 4-byte words, of 16 consecutive rows with an even bf16 row stride st (gather indices). */
static inline __m512i word_rows(int64_t st) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int)(st / 2)));
}

/* common.c */
INTERNAL void pack_k(const bf16 *k, int64_t st, int len, int dh, int lp, int32_t *kp);
INTERNAL void pack_v(const bf16 *v, int64_t st, int len, int rows, int dh, bf16 *vp);
INTERNAL float softmax_row(const float *s, int valid, int width, bf16 *p, float mult, float *row_max);
INTERNAL void amx_configure(void);
INTERNAL void amx_enter(tile_config *saved);
INTERNAL void amx_leave(const tile_config *saved);
INTERNAL void amx_scores(const bf16 *a, int64_t astride, const int32_t *kp, int l16, int ncols, int dh, float *out,
                         int ostride);
INTERNAL void amx_rows_times_pairs(const bf16 *a, int64_t astride, const bf16 *bp, int dh, int kmax,
                                   const float *row_scale, int nrows, bf16 *out, int64_t ost, float *scratch);
INTERNAL const bf16 *tile_rows(const bf16 *src, int64_t st, int i0, int nrows, int dh, bf16 *buf, int64_t *stride);

#endif
