/* Exact softmax attention for packed short documents, bf16 in and out, on x86-64 CPUs with AMX-BF16
 * (Sapphire Rapids and later) or AVX-512 BF16 (Cooper Lake, Zen 4).
 *
 * Built and loaded by attnlab/native/__init__.py (gcc, no torch headers); called through ctypes on the
 * data pointers of torch tensors. Semantics are those of attnlab.attention.documents.per_document_attention:
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
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ROWS 8 /* query rows per block: 2 * ROWS accumulators in flight hide vdpbf16ps's ~12-cycle latency */
#define MAX_DH 256

typedef uint16_t bf16;

/* Bit 0: AVX-512 BF16 usable; bit 1: AMX-BF16 usable (asks Linux for the tile-data permission). */
int attnlab_native_caps(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int avx512 = (b >> 16) & 1 && (b >> 30) & 1;     /* AVX512F, AVX512BW */
    int amx = (d >> 22) & 1 && (d >> 24) & 1;         /* AMX-BF16, AMX-TILE */
    __get_cpuid_count(7, 1, &a, &b, &c, &d);
    int avx512bf16 = avx512 && ((a >> 5) & 1);
    if (!avx512bf16) return 0;                        /* the softmax and packing use AVX-512 */
    if (amx && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) amx = 0;
    return 1 | (amx ? 2 : 0);
}

static inline __m512bh bcast_pair(const bf16 *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return (__m512bh)_mm512_set1_epi32(w);
}

/* 2^x for x <= 0 (x >= -125 after the clamp): 2^n * p(f), n = round(x), f in [-0.5, 0.5], p the degree-5
 * Taylor polynomial of 2^f (relative error <= 3.3e-6, far below bf16's 3.9e-3 rounding of P). */
static inline __m512 exp2_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-125.0f)); /* 2^(n + f) >= 2^-125.5: no denormals (slow) */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.3333558e-3f); /* ln(2)^k / k! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022651f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69314718f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* y[i] = 2^x[i] for x[i] <= 0 with the kernel's polynomial (exported for the accuracy test). */
void attnlab_native_exp2(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp2_neg(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, exp2_neg(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

static inline __mmask16 first_n(int n) { /* lanes [0, n) of 16 (n clamped to [0, 16]) */
    return n >= 16 ? 0xFFFF : n > 0 ? (__mmask16)((1u << n) - 1) : 0;
}

/* Offsets, in 4-byte words, of 16 consecutive rows with an even bf16 row stride st (gather indices). */
static inline __m512i word_rows(int64_t st) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int)(st / 2)));
}

/* kp[d2 * lp + j] (32-bit pairs) = k[j, 2 d2 : 2 d2 + 2]; columns j >= len are zero. One gather per
 * 16 rows and pair (the token stride st is even, so pairs are 4-byte words). */
static void pack_k(const bf16 *k, int64_t st, int len, int dh, int lp, int32_t *kp) {
    const int *words = (const int *)k;
    __m512i rows = word_rows(st);
    for (int j = 0; j < lp; j += 16) {
        __mmask16 m = first_n(len - j);
        const int *base = words + (int64_t)j * (st / 2);
        for (int d2 = 0; d2 < dh / 2; d2++)
            _mm512_storeu_si512(kp + d2 * lp + j,
                                _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rows, base + d2, 4));
    }
}

/* vp[(j2 * dh + d) * 2 + c] = v[2 j2 + c, d]: rows interleaved pairwise; a missing odd row is zero, and
 * so are the rows from len up to `rows` (even). */
static void pack_v(const bf16 *v, int64_t st, int len, int rows, int dh, bf16 *vp) {
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int j = 0; j < len; j += 2) {
        const bf16 *a = v + j * st, *b = v + (j + 1) * st;
        for (int d = 0; d < dh; d += 32) {
            __mmask32 m = dh - d >= 32 ? 0xFFFFFFFFu : 0xFFFFu; /* head_dim % 16 == 0 */
            __m512i x = _mm512_maskz_loadu_epi16(m, a + d);
            __m512i y = j + 1 < len ? _mm512_maskz_loadu_epi16(m, b + d) : _mm512_setzero_si512();
            bf16 *dst = vp + ((int64_t)(j / 2) * dh + d) * 2;
            _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(x, lo, y));
            if (dh - d >= 32) _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(x, hi, y));
        }
    }
    int done = (len + 1) & ~1;
    if (rows > done) memset(vp + (size_t)done * dh, 0, (size_t)(rows - done) * dh * 2);
}

/* Scores of ROWS query rows against key columns [0, ncols) (multiple of 16), times `mult`, into s.
 * Two 16-column blocks at a time: 2 * ROWS independent accumulators hide the dot-product latency. */
static void scores(const bf16 *const q[ROWS], const int32_t *kp, int d2n, int lp, int ncols, float mult,
                   float *s) {
    __m512 m = _mm512_set1_ps(mult);
    int j = 0;
    for (; j + 32 <= ncols; j += 32) {
        __m512 a0[ROWS], a1[ROWS];
        for (int r = 0; r < ROWS; r++) a0[r] = a1[r] = _mm512_setzero_ps();
        for (int d2 = 0; d2 < d2n; d2++) {
            __m512bh k0 = (__m512bh)_mm512_loadu_si512(kp + d2 * lp + j);
            __m512bh k1 = (__m512bh)_mm512_loadu_si512(kp + d2 * lp + j + 16);
            for (int r = 0; r < ROWS; r++) {
                __m512bh qv = bcast_pair(q[r] + 2 * d2);
                a0[r] = _mm512_dpbf16_ps(a0[r], qv, k0);
                a1[r] = _mm512_dpbf16_ps(a1[r], qv, k1);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            _mm512_storeu_ps(s + r * lp + j, _mm512_mul_ps(a0[r], m));
            _mm512_storeu_ps(s + r * lp + j + 16, _mm512_mul_ps(a1[r], m));
        }
    }
    if (j < ncols) {
        __m512 acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
        for (int d2 = 0; d2 < d2n; d2++) {
            __m512bh kv = (__m512bh)_mm512_loadu_si512(kp + d2 * lp + j);
            for (int r = 0; r < ROWS; r++) acc[r] = _mm512_dpbf16_ps(acc[r], bcast_pair(q[r] + 2 * d2), kv);
        }
        for (int r = 0; r < ROWS; r++) _mm512_storeu_ps(s + r * lp + j, _mm512_mul_ps(acc[r], m));
    }
}

/* Row softmax numerator over [0, valid): p <- bf16(2^((s - max) mult)), zeros up to `width` (even) and
 * up to the next multiple of 16 (p rows are 16-padded); returns the fp32 sum of the unrounded values
 * and stores max(s) in *row_max. */
static float softmax_row(const float *s, int valid, int width, bf16 *p, float mult, float *row_max) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= valid; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    __mmask16 tail = (__mmask16)((1u << (valid - j)) - 1);
    if (tail) mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_loadu_ps(s + j));
    *row_max = _mm512_reduce_max_ps(mx);
    __m512 m = _mm512_set1_ps(mult), off = _mm512_set1_ps(*row_max * mult);
    __m512 sum = _mm512_setzero_ps();
    for (j = 0; j + 16 <= valid; j += 16) {
        __m512 e = exp2_neg(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), m, off));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256((__m256i *)(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (tail) { /* the last columns; masked lanes are exact zeros */
        __m512 e = _mm512_maskz_mov_ps(tail, exp2_neg(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), m, off)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256((__m256i *)(p + j), (__m256i)_mm512_cvtneps_pbh(e));
        j += 16;
    }
    if (j < width) memset(p + j, 0, (size_t)(width - j) * 2); /* the column after an odd `valid`, causal tails */
    return _mm512_reduce_add_ps(sum);
}

/* out[r][d0 : d0 + 16 NV] <- (p @ v) / sum for ROWS rows, NV output vectors per pass (a compile-time
 * constant, so the ROWS * NV accumulators stay in registers and share each broadcast probability pair). */
static inline __attribute__((always_inline)) void pv_pass(const bf16 *p, int pstride, const bf16 *vp, int dh,
                                                          int d0, int pairs, const float inv[ROWS],
                                                          bf16 *const out[ROWS], int nrows, const int NV) {
    __m512 acc[ROWS][2];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < NV; c++) acc[r][c] = _mm512_setzero_ps();
    for (int j2 = 0; j2 < pairs; j2++) {
        const bf16 *row = vp + ((int64_t)j2 * dh + d0) * 2;
        __m512bh vv[2];
        for (int c = 0; c < NV; c++) vv[c] = (__m512bh)_mm512_loadu_si512(row + 32 * c);
        for (int r = 0; r < ROWS; r++) {
            __m512bh pv = bcast_pair(p + r * pstride + 2 * j2);
            for (int c = 0; c < NV; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pv, vv[c]);
        }
    }
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < NV; c++) {
            __m512 o = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(inv[r]));
            _mm256_storeu_si256((__m256i *)(out[r] + d0 + 16 * c), (__m256i)_mm512_cvtneps_pbh(o));
        }
}

/* out rows <- (p @ v) / sum for ROWS rows; p rows have `pairs` * 2 columns; 32 output dims per pass. */
static void probs_times_v(const bf16 *p, int pstride, const bf16 *vp, int dh, int pairs, const float inv[ROWS],
                          bf16 *const out[ROWS], int nrows) {
    int d0 = 0;
    for (; d0 + 32 <= dh; d0 += 32) pv_pass(p, pstride, vp, dh, d0, pairs, inv, out, nrows, 2);
    if (d0 < dh) pv_pass(p, pstride, vp, dh, d0, pairs, inv, out, nrows, 1);
}

/* One (document, head) on AVX-512 BF16: q rows [0, len) against k, v rows [0, len). */
static void attend_one_avx(const bf16 *q, int64_t qst, const bf16 *k, int64_t kst, const bf16 *v, int64_t vst,
                       bf16 *o, int64_t ost, int len, int dh, float mult, int causal, int32_t *kp, bf16 *vp,
                       float *s, bf16 *p) {
    /* lp: padded columns (row stride of s and p); width: even columns P @ V reads */
    int lp = (len + 15) & ~15, width = (len + 1) & ~1, d2n = dh / 2;
    pack_k(k, kst, len, dh, lp, kp);
    pack_v(v, vst, len, len, dh, vp);
    for (int i0 = 0; i0 < len; i0 += ROWS) {
        int nrows = len - i0 < ROWS ? len - i0 : ROWS;
        const bf16 *qr[ROWS];
        bf16 *orow[ROWS];
        float inv[ROWS];
        for (int r = 0; r < ROWS; r++) {
            int i = i0 + (r < nrows ? r : nrows - 1); /* past the end: repeat the last row, result unused */
            qr[r] = q + i * qst;
            orow[r] = o + i * ost;
        }
        int last = i0 + nrows;                             /* causal: columns < last are enough */
        int ncols = causal ? ((last + 15) & ~15) : lp;
        int block_width = causal ? ((last + 1) & ~1) : width;
        scores(qr, kp, d2n, lp, ncols, mult, s);
        for (int r = 0; r < ROWS; r++) {
            int valid = causal ? (r < nrows ? i0 + r + 1 : last) : len;
            float row_max;
            inv[r] = 1.0f / softmax_row(s + r * lp, valid, block_width, p + r * lp, 1.0f, &row_max);
        }
        probs_times_v(p, lp, vp, dh, block_width / 2, inv, orow, nrows);
    }
}

/* ---- AMX path: 16 x 16 tiles, one TDPBF16PS per 16 queries x 16 keys x 32 dims ---------------------- */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Every tile 16 rows x 64 bytes: Q (16 x 32 bf16), K pairs (16 x 16 pairs), scores / outputs (16 x 16 fp32),
 * P (16 x 32 bf16), V pairs (16 key pairs x 16 dims x 2). Tile state is per thread: set on every call. */
static void amx_configure(void) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
}

/* O tiles 0, 5, 6, 7 (+)= P tile 3 @ V tile 4 for `nt` 16-dim output tiles; tile numbers are immediates. */
#define AMX_PV_STEP(nt, vbase, vstride)                                                                       \
    do {                                                                                                  \
        _tile_loadd(4, (vbase), (vstride)); _tile_dpbf16ps(0, 3, 4);                                       \
        if ((nt) > 1) { _tile_loadd(4, (vbase) + 32, (vstride)); _tile_dpbf16ps(5, 3, 4); }               \
        if ((nt) > 2) { _tile_loadd(4, (vbase) + 64, (vstride)); _tile_dpbf16ps(6, 3, 4); }               \
        if ((nt) > 3) { _tile_loadd(4, (vbase) + 96, (vstride)); _tile_dpbf16ps(7, 3, 4); }               \
    } while (0)

/* Score tile `acc` = Q (tiles 1, 3) @ K^T columns [j0, j0 + 16) for head_dim 32 or 64. */
#define AMX_SCORE_TILE(acc, j0)                                                                          \
    do {                                                                                                 \
        _tile_zero(acc);                                                                                 \
        _tile_loadd(2, kp + (j0), l16 * 4); _tile_dpbf16ps(acc, 1, 2);                                   \
        if (dh == 64) { _tile_loadd(4, kp + 16 * l16 + (j0), l16 * 4); _tile_dpbf16ps(acc, 3, 4); }      \
    } while (0)

/* out[r][j] = a[r] . b[:, j] for 16 rows of `a` (row stride astride bytes) and columns j < ncols (multiple
 * of 16) of the pair-transposed bp (bp[d2 * l16 + j]); out row stride ostride floats. head_dim 32 and 64
 * keep A in tiles 1 and 3 with up to four score tiles in flight (0, 5, 6, 7). */
static void amx_scores(const bf16 *a, int64_t astride, const int32_t *kp, int l16, int ncols, int dh, float *out,
                       int ostride) {
    if (dh <= 64) {
        _tile_loadd(1, a, astride);
        if (dh == 64) _tile_loadd(3, a + 32, astride);
        for (int j0 = 0; j0 < ncols; j0 += 64) {
            int n = (ncols - j0) / 16 < 4 ? (ncols - j0) / 16 : 4;
            AMX_SCORE_TILE(0, j0);
            if (n > 1) AMX_SCORE_TILE(5, j0 + 16);
            if (n > 2) AMX_SCORE_TILE(6, j0 + 32);
            if (n > 3) AMX_SCORE_TILE(7, j0 + 48);
            _tile_stored(0, out + j0, ostride * 4);
            if (n > 1) _tile_stored(5, out + j0 + 16, ostride * 4);
            if (n > 2) _tile_stored(6, out + j0 + 32, ostride * 4);
            if (n > 3) _tile_stored(7, out + j0 + 48, ostride * 4);
        }
        return;
    }
    for (int j0 = 0; j0 < ncols; j0 += 16) {
        _tile_zero(0);
        for (int c = 0; c < dh; c += 32) {
            _tile_loadd(1, a + c, astride);
            _tile_loadd(2, kp + (c / 2) * l16 + j0, l16 * 4);
            _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, out + j0, ostride * 4);
    }
}

/* One (document, head) on AMX: q rows [0, len) against k, v rows [0, len); head_dim % 32 == 0.
 * Buffers: kp (l16 x dh/2 pairs), vp (l32 x dh), s (16 x l32 fp32), p (16 x l32 bf16), qt (16 x dh bf16),
 * ot (16 x 64 fp32). lse (stride lst), when not NULL, receives each row's log2 sum_j 2^(s_ij mult). */
static void attend_one_amx(
    const bf16 *q, int64_t qst, const bf16 *k, int64_t kst, const bf16 *v, int64_t vst, bf16 *o, int64_t ost,
    int len, int dh, float mult, int causal, int32_t *kp, bf16 *vp, float *s, bf16 *p, bf16 *qt, float *ot,
    float *lse, int64_t lst) {
    int l16 = (len + 15) & ~15, l32 = (len + 31) & ~31;
    pack_k(k, kst, len, dh, l16, kp);
    pack_v(v, vst, len, l32, dh, vp);
    for (int i0 = 0; i0 < len; i0 += 16) {
        int nrows = len - i0 < 16 ? len - i0 : 16;
        const bf16 *qa = q + i0 * qst; /* A operand: 16 query rows, straight from the strided input */
        int64_t qstride = qst * 2;
        if (nrows < 16) {              /* the last rows: copy, zero-padded, so no load leaves the tensor */
            for (int r = 0; r < 16; r++) {
                if (r < nrows) memcpy(qt + r * dh, q + (i0 + r) * qst, (size_t)dh * 2);
                else memset(qt + r * dh, 0, (size_t)dh * 2);
            }
            qa = qt;
            qstride = dh * 2;
        }
        int last = i0 + nrows;                                   /* causal: keys < last are enough */
        int ncols = causal ? ((last + 15) & ~15) : l16;          /* score columns computed */
        int kmax = causal ? ((last + 31) & ~31) : l32;           /* keys P @ V reads (zero-padded) */
        amx_scores(qa, qstride, kp, l16, ncols, dh, s, l32);
        float inv[16];
        for (int r = 0; r < nrows; r++) {
            int valid = causal ? i0 + r + 1 : len;
            float row_max, sum = softmax_row(s + r * l32, valid, kmax, p + r * l32, mult, &row_max);
            inv[r] = 1.0f / sum;
            if (lse) lse[(i0 + r) * lst] = row_max * mult + log2f(sum); /* base-2 log-sum-exp, for backward */
        }
        for (int r = nrows; r < 16; r++) memset(p + r * l32, 0, (size_t)kmax * 2);
        for (int d0 = 0; d0 < dh; d0 += 64) {                    /* out[:, d0:d0+64] = P V */
            int nt = (dh - d0) / 16 < 4 ? (dh - d0) / 16 : 4;
            _tile_zero(0); _tile_zero(5); _tile_zero(6); _tile_zero(7);
            for (int kk = 0; kk < kmax; kk += 32) {
                _tile_loadd(3, p + kk, l32 * 2);
                const bf16 *vb = vp + ((int64_t)(kk / 2) * dh + d0) * 2;
                if (nt == 4) AMX_PV_STEP(4, vb, dh * 4);
                else AMX_PV_STEP(2, vb, dh * 4); /* dh % 32 == 0: 2 or 4 tiles */
            }
            _tile_stored(0, ot, 256);
            _tile_stored(5, ot + 16, 256);
            if (nt == 4) {
                _tile_stored(6, ot + 32, 256);
                _tile_stored(7, ot + 48, 256);
            }
            for (int r = 0; r < nrows; r++) {
                __m512 scale_r = _mm512_set1_ps(inv[r]);
                for (int t = 0; t < nt; t++) {
                    __m512 x = _mm512_mul_ps(_mm512_loadu_ps(ot + r * 64 + 16 * t), scale_r);
                    _mm256_storeu_si256((__m256i *)(o + (i0 + r) * ost + d0 + 16 * t), (__m256i)_mm512_cvtneps_pbh(x));
                }
            }
        }
    }
}

/* ---- AMX backward (FlashAttention-2's equations, one (document, head) whole, in cache) ------------------
 * With S = scale Q K^T, P = softmax(S) (from the forward's base-2 log-sum-exp), D_i = dO_i . O_i:
 *   dP = dO V^T,  dS = P o (dP - D),  dQ = scale dS K,  dK^T = scale Q^T dS,  dV^T = dO^T P.
 * Phase 1 walks 16-query tiles: S and dP tiles, then P and dS (fp32 -> bf16) stored interleaved in query
 * pairs (the B layout for the transposed products) and dS rows for dQ. Phase 2 forms dK^T and dV^T tile
 * by tile, each accumulator in a tile register over all query blocks, and writes them transposed. */

/* dst (dh x l32 bf16, zero past len) = src^T for src rows [0, len) with row stride st (even): one
 * gather of 4-byte words per 16 rows and pair of columns, split into the two columns. */
static void transpose_rows(const bf16 *src, int64_t st, int len, int dh, int l32, bf16 *dst) {
    const int *words = (const int *)src;
    __m512i rows = word_rows(st);
    for (int i = 0; i < l32; i += 16) {
        __mmask16 m = first_n(len - i);
        const int *base = words + (int64_t)i * (st / 2);
        for (int d = 0; d < dh; d += 2) {
            __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rows, base + d / 2, 4);
            _mm256_storeu_si256((__m256i *)(dst + (size_t)d * l32 + i), _mm512_cvtepi32_epi16(w));
            _mm256_storeu_si256((__m256i *)(dst + (size_t)(d + 1) * l32 + i),
                                _mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16)));
        }
    }
}

/* A 16-row A operand from rows [i0, i0 + nrows) of src (stride st): the rows in place, or a zero-padded
 * copy in buf (16 x dh) for the last tile so no load leaves the tensor. Returns the pointer; *stride bytes. */
static const bf16 *tile_rows(const bf16 *src, int64_t st, int i0, int nrows, int dh, bf16 *buf, int64_t *stride) {
    if (nrows == 16) {
        *stride = st * 2;
        return src + i0 * st;
    }
    for (int r = 0; r < 16; r++) {
        if (r < nrows) memcpy(buf + r * dh, src + (i0 + r) * st, (size_t)dh * 2);
        else memset(buf + r * dh, 0, (size_t)dh * 2);
    }
    *stride = dh * 2;
    return buf;
}

static inline float dot_bf16(const bf16 *a, const bf16 *b, int dh) { /* fp32 sum of a[d] b[d], dh % 16 == 0 */
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < dh; d += 16) {
        __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(a + d))), 16));
        __m512 y = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(b + d))), 16));
        acc = _mm512_fmadd_ps(x, y, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* out (ncol x dh, row stride ost, bf16) = scale * in^T for in (dh x l16 fp32), columns [0, ncol). */
static void write_transposed(const float *in, int l16, int ncol, int dh, float scale, bf16 *out, int64_t ost) {
    for (int j = 0; j < ncol; j++) {
        bf16 *row = out + j * ost;
        for (int d = 0; d < dh; d += 16) {
            __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                                                12, 13, 14, 15), _mm512_set1_epi32(l16)),
                                           _mm512_set1_epi32(d * l16 + j));
            __m512 x = _mm512_mul_ps(_mm512_i32gather_ps(idx, in, 4), _mm512_set1_ps(scale));
            _mm256_storeu_si256((__m256i *)(row + d), (__m256i)_mm512_cvtneps_pbh(x));
        }
    }
}

/* acc (dh x l16 fp32) = a (dh x l32 bf16 rows, queries) @ bi (queries interleaved in pairs x l16 keys),
 * summing query blocks of 32 from qstart (causal: earlier queries contribute nothing to later keys). */
static void amx_transposed_product(const bf16 *a, const bf16 *bi, int l16, int l32, int dh, int causal, float *acc) {
    for (int j0 = 0; j0 < l16; j0 += 16) {
        int qstart = causal ? (j0 & ~31) : 0;
        for (int d0 = 0; d0 < dh; d0 += 64) {
            int nt = (dh - d0) / 16 < 4 ? (dh - d0) / 16 : 4;
            _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
            for (int qb = qstart; qb < l32; qb += 32) {
                _tile_loadd(2, bi + ((size_t)(qb / 2) * l16 + j0) * 2, l16 * 4);
                const bf16 *ab = a + (size_t)d0 * l32 + qb;
                _tile_loadd(0, ab, l32 * 2); _tile_dpbf16ps(4, 0, 2);
                _tile_loadd(1, ab + 16 * l32, l32 * 2); _tile_dpbf16ps(5, 1, 2);
                if (nt > 2) { _tile_loadd(0, ab + 32 * l32, l32 * 2); _tile_dpbf16ps(6, 0, 2); }
                if (nt > 3) { _tile_loadd(1, ab + 48 * l32, l32 * 2); _tile_dpbf16ps(7, 1, 2); }
            }
            _tile_stored(4, acc + (size_t)d0 * l16 + j0, l16 * 4);
            _tile_stored(5, acc + (size_t)(d0 + 16) * l16 + j0, l16 * 4);
            if (nt > 2) _tile_stored(6, acc + (size_t)(d0 + 32) * l16 + j0, l16 * 4);
            if (nt > 3) _tile_stored(7, acc + (size_t)(d0 + 48) * l16 + j0, l16 * 4);
        }
    }
}

typedef struct { /* per-thread buffers of the backward pass, sized for the longest document */
    int32_t *kp, *vpk;           /* K, V pair-transposed (dh/2 x l16): B of S = Q K^T and dP = dO V^T */
    bf16 *kv;                    /* K interleaved in key pairs (l32 x dh): B of dQ = dS K */
    bf16 *qT, *doT;              /* Q^T, dO^T (dh x l32): A of dK^T and dV^T */
    bf16 *pi, *dsi;              /* P, dS interleaved in query pairs (l32/2 x l16 x 2) */
    float *s, *dp;               /* 16 x l32 score and dP tiles */
    bf16 *dsrow;                 /* 16 x l32 dS rows (A of dQ) */
    bf16 *qt, *dot;              /* zero-padded 16 x dh copies of the last query tile */
    float *acc;                  /* dh x l16 fp32 (dK^T, then dV^T); also 16 x dh for dQ */
    bf16 *local;                 /* 5 x l32 x dh: contiguous copies of this document's q, k, v, o, dO rows */
} bwd_buffers;

/* dst (len x dh, contiguous) = rows [0, len) of src (row stride st): a sequential, prefetch-friendly read
 * of a strided head slice, so the gathers and tile loads that follow hit the cache. */
static void copy_rows(const bf16 *src, int64_t st, int len, int dh, bf16 *dst) {
    for (int i = 0; i < len; i++) memcpy(dst + (size_t)i * dh, src + i * st, (size_t)dh * 2);
}

static void backward_one_amx(const bf16 *q, int64_t qst, const bf16 *k, int64_t kst, const bf16 *v, int64_t vst,
                             const bf16 *o, int64_t ost, const bf16 *dout, int64_t dost, const float *lse, int64_t lst,
                             bf16 *dq, int64_t dqst, bf16 *dk, int64_t dkst, bf16 *dv, int64_t dvst, int len, int dh,
                             float scale, int causal, const bwd_buffers *w) {
    const float mult = scale * 1.4426950408889634f;
    size_t slot = (size_t)((len + 31) & ~31) * dh;
    bf16 *lq = w->local, *lk = lq + slot, *lv = lk + slot, *lo_ = lv + slot, *ldo = lo_ + slot;
    copy_rows(q, qst, len, dh, lq);
    copy_rows(k, kst, len, dh, lk);
    copy_rows(v, vst, len, dh, lv);
    copy_rows(o, ost, len, dh, lo_);
    copy_rows(dout, dost, len, dh, ldo);
    q = lq, k = lk, v = lv, o = lo_, dout = ldo;
    qst = kst = vst = ost = dost = dh;
    const __m512i pair_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                             39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    int l16 = (len + 15) & ~15, l32 = (len + 31) & ~31;
    pack_k(k, kst, len, dh, l16, w->kp);
    pack_k(v, vst, len, dh, l16, w->vpk);
    pack_v(k, kst, len, l32, dh, w->kv);
    transpose_rows(q, qst, len, dh, l32, w->qT);
    transpose_rows(dout, dost, len, dh, l32, w->doT);
    for (int i0 = 0; i0 < l32; i0 += 16) {
        int nrows = len - i0 < 16 ? (len - i0 > 0 ? len - i0 : 0) : 16;
        if (nrows == 0) { /* a zero query tile: P and dS are zero there */
            for (int r = 0; r < 16; r += 2) {
                memset(w->pi + (size_t)((i0 + r) / 2) * l16 * 2, 0, (size_t)l16 * 4);
                memset(w->dsi + (size_t)((i0 + r) / 2) * l16 * 2, 0, (size_t)l16 * 4);
            }
            continue;
        }
        int64_t qstride, dstride;
        const bf16 *qa = tile_rows(q, qst, i0, nrows, dh, w->qt, &qstride);
        const bf16 *da = tile_rows(dout, dost, i0, nrows, dh, w->dot, &dstride);
        int last = i0 + nrows;
        int ncols = causal ? ((last + 15) & ~15) : l16;
        int kmax = causal ? ((last + 31) & ~31) : l32;
        amx_scores(qa, qstride, w->kp, l16, ncols, dh, w->s, l32);
        amx_scores(da, dstride, w->vpk, l16, ncols, dh, w->dp, l32);
        for (int r = 0; r < 16; r += 2) {
            int ie = i0 + r, io = ie + 1;
            int ve = ie < len ? (causal ? ie + 1 : len) : 0, vo = io < len ? (causal ? io + 1 : len) : 0;
            __m512 le = _mm512_set1_ps(ie < len ? lse[ie * lst] : 0), lo = _mm512_set1_ps(io < len ? lse[io * lst] : 0);
            __m512 De = _mm512_set1_ps(ie < len ? dot_bf16(dout + ie * dost, o + ie * ost, dh) : 0);
            __m512 Do = _mm512_set1_ps(io < len ? dot_bf16(dout + io * dost, o + io * ost, dh) : 0);
            __m512 m = _mm512_set1_ps(mult);
            const float *se = w->s + r * l32, *so = se + l32, *dpe = w->dp + r * l32, *dpo = dpe + l32;
            /* causal: phase 2 reads query i only for keys below floor32(i) + 32, and dQ below kmax */
            int jmax = causal && (ie & ~31) + 32 < l16 ? (ie & ~31) + 32 : l16;
            for (int j = 0; j < jmax; j += 16) {
                __mmask16 ke = first_n(ve - j);
                __mmask16 ko = first_n(vo - j);
                __m512 pe = _mm512_setzero_ps(), po = pe, dse = pe, dso = pe;
                if (ke) {
                    pe = _mm512_maskz_mov_ps(ke, exp2_neg(_mm512_fmsub_ps(_mm512_loadu_ps(se + j), m, le)));
                    dse = _mm512_mul_ps(pe, _mm512_sub_ps(_mm512_loadu_ps(dpe + j), De));
                }
                if (ko) {
                    po = _mm512_maskz_mov_ps(ko, exp2_neg(_mm512_fmsub_ps(_mm512_loadu_ps(so + j), m, lo)));
                    dso = _mm512_mul_ps(po, _mm512_sub_ps(_mm512_loadu_ps(dpo + j), Do));
                }
                __m512i bpe = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(pe));
                __m512i bpo = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(po));
                __m256i bde = (__m256i)_mm512_cvtneps_pbh(dse), bdo = (__m256i)_mm512_cvtneps_pbh(dso);
                size_t at = ((size_t)(ie / 2) * l16 + j) * 2;
                _mm512_storeu_si512(w->pi + at, _mm512_permutex2var_epi16(bpe, pair_lo, bpo));
                _mm512_storeu_si512(w->dsi + at, _mm512_permutex2var_epi16(_mm512_castsi256_si512(bde), pair_lo,
                                                                          _mm512_castsi256_si512(bdo)));
                _mm256_storeu_si256((__m256i *)(w->dsrow + r * l32 + j), bde);
                _mm256_storeu_si256((__m256i *)(w->dsrow + (r + 1) * l32 + j), bdo);
            }
            if (l32 > l16) {
                memset(w->dsrow + r * l32 + l16, 0, (size_t)(l32 - l16) * 2);
                memset(w->dsrow + (r + 1) * l32 + l16, 0, (size_t)(l32 - l16) * 2);
            }
        }
        /* dQ rows = scale dS K: A = dS rows (16 x 32 keys), B = K in key pairs */
        for (int d0 = 0; d0 < dh; d0 += 64) {
            int nt = (dh - d0) / 16 < 4 ? (dh - d0) / 16 : 4;
            _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
            for (int kk = 0; kk < kmax; kk += 32) {
                _tile_loadd(3, w->dsrow + kk, l32 * 2);
                const bf16 *kb = w->kv + ((size_t)(kk / 2) * dh + d0) * 2;
                _tile_loadd(2, kb, dh * 4); _tile_dpbf16ps(4, 3, 2);
                _tile_loadd(2, kb + 32, dh * 4); _tile_dpbf16ps(5, 3, 2);
                if (nt > 2) { _tile_loadd(2, kb + 64, dh * 4); _tile_dpbf16ps(6, 3, 2); }
                if (nt > 3) { _tile_loadd(2, kb + 96, dh * 4); _tile_dpbf16ps(7, 3, 2); }
            }
            _tile_stored(4, w->acc, 256);
            _tile_stored(5, w->acc + 16, 256);
            if (nt > 2) _tile_stored(6, w->acc + 32, 256);
            if (nt > 3) _tile_stored(7, w->acc + 48, 256);
            for (int r = 0; r < nrows; r++)
                for (int t = 0; t < nt; t++) {
                    __m512 x = _mm512_mul_ps(_mm512_loadu_ps(w->acc + r * 64 + 16 * t), _mm512_set1_ps(scale));
                    _mm256_storeu_si256((__m256i *)(dq + (i0 + r) * dqst + d0 + 16 * t), (__m256i)_mm512_cvtneps_pbh(x));
                }
        }
    }
    amx_transposed_product(w->qT, w->dsi, l16, l32, dh, causal, w->acc); /* dK^T = Q^T dS */
    write_transposed(w->acc, l16, len, dh, scale, dk, dkst);
    amx_transposed_product(w->doT, w->pi, l16, l32, dh, causal, w->acc); /* dV^T = dO^T P */
    write_transposed(w->acc, l16, len, dh, 1.0f, dv, dvst);
}

/* Gradients of attnlab_attend_docs_bf16 (AMX path, head_dim % 32 == 0) for work items [begin, end).
 * Tensors and strides as there; o and dout are the forward output and its gradient, lse the forward's
 * base-2 log-sum-exp. dk and dv are per QUERY head (heads x ...): with grouped KV heads the caller sums
 * each group. nthreads as in the forward. Returns 0, or -1 when a buffer could not be allocated. */
int attnlab_attend_docs_bf16_backward(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *o, const bf16 *dout,
                                      const float *lse, bf16 *dq, bf16 *dk, bf16 *dv, const int64_t *qs,
                                      const int64_t *ks, const int64_t *vs, const int64_t *os, const int64_t *dos,
                                      const int64_t *ls, const int64_t *dqs, const int64_t *dks, const int64_t *dvs,
                                      const int64_t *docs, int64_t begin, int64_t end, int heads, int kv_heads,
                                      int dh, float scale, int causal, int nthreads) {
    int maxlen = 0;
    for (int64_t it = begin; it < end; it++) {
        int len = (int)docs[(it / heads) * 3 + 2];
        if (len > maxlen) maxlen = len;
    }
    size_t l32 = (size_t)(maxlen + 31) & ~(size_t)31, d = (size_t)dh;
    int group = heads / kv_heads, failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        bwd_buffers w;
        void *all[] = {
            w.kp = aligned_alloc(64, l32 * d * 2), w.vpk = aligned_alloc(64, l32 * d * 2),
            w.kv = aligned_alloc(64, l32 * d * 2), w.qT = aligned_alloc(64, l32 * d * 2),
            w.doT = aligned_alloc(64, l32 * d * 2), w.pi = aligned_alloc(64, l32 * l32 * 2),
            w.dsi = aligned_alloc(64, l32 * l32 * 2), w.s = aligned_alloc(64, 16 * l32 * 4),
            w.dp = aligned_alloc(64, 16 * l32 * 4), w.dsrow = aligned_alloc(64, 16 * l32 * 2),
            w.qt = aligned_alloc(64, 16 * d * 2), w.dot = aligned_alloc(64, 16 * d * 2),
            w.acc = aligned_alloc(64, (l32 > 64 ? l32 : 64) * (d > 64 ? d : 64) * 4),
            w.local = aligned_alloc(64, 5 * l32 * d * 2),
        };
        int ok = 1;
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) ok = ok && all[i];
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        tile_config saved;
        if (ok) {
            _tile_storeconfig(&saved);
            amx_configure();
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = begin; it < end; it++) {
            const int64_t *doc = docs + (it / heads) * 3;
            int h = (int)(it % heads), hk = h / group, len = (int)doc[2];
            if (!ok || len == 0) continue;
            int64_t b = doc[0], t0 = doc[1];
            backward_one_amx(q + b * qs[0] + h * qs[1] + t0 * qs[2], qs[2], k + b * ks[0] + hk * ks[1] + t0 * ks[2],
                             ks[2], v + b * vs[0] + hk * vs[1] + t0 * vs[2], vs[2], o + b * os[0] + h * os[1] + t0 * os[2],
                             os[2], dout + b * dos[0] + h * dos[1] + t0 * dos[2], dos[2],
                             lse + b * ls[0] + h * ls[1] + t0 * ls[2], ls[2], dq + b * dqs[0] + h * dqs[1] + t0 * dqs[2],
                             dqs[2], dk + b * dks[0] + h * dks[1] + t0 * dks[2], dks[2],
                             dv + b * dvs[0] + h * dvs[1] + t0 * dvs[2], dvs[2], len, dh, scale, causal, &w);
        }
        if (ok) {
            if (saved.palette) _tile_loadconfig(&saved);
            else _tile_release();
        }
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
    }
    return failed ? -1 : 0;
}

/* Attend work items [begin, end) of the (document, head) grid, item = doc * heads + head.
 * q, k, v, out: element offsets b * s?b + h * s?h + t * s?t (+ d). kv head = head / (heads / kv_heads).
 * use_amx: 1 for the AMX path (caps bit 1 and head_dim % 32 == 0), 0 for AVX-512 BF16.
 * lse: NULL, or (AMX path) the per-row base-2 log-sum-exp of the scaled scores at b * ls[0] + h * ls[1] +
 * t * ls[2], which the backward pass needs. nthreads: OpenMP threads; the items are dealt out one at a
 * time. Linked against libgomp.so.1, this is the team PyTorch's own OpenMP runtime keeps (its spinning
 * workers would otherwise compete with any threads of ours).
 * Returns 0, or -1 when a buffer could not be allocated. */
int attnlab_attend_docs_bf16(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out, const int64_t *qs,
                             const int64_t *ks, const int64_t *vs, const int64_t *os, const int64_t *docs,
                             int64_t begin, int64_t end, int heads, int kv_heads, int dh, float scale,
                             int causal, int use_amx, float *lse, const int64_t *ls, int nthreads) {
    int maxlen = 0;
    for (int64_t it = begin; it < end; it++) {
        int len = (int)docs[(it / heads) * 3 + 2];
        if (len > maxlen) maxlen = len;
    }
    size_t lp = (size_t)(maxlen + 31) & ~(size_t)31; /* sizes below are multiples of 64 bytes */
    float mult = scale * 1.4426950408889634f;        /* exp(x) = 2^(x log2 e) */
    int group = heads / kv_heads, failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        int32_t *kp = aligned_alloc(64, lp * dh * 2 + 64);
        bf16 *vp = aligned_alloc(64, lp * dh * 2 + 64);
        float *s = aligned_alloc(64, 16 * lp * 4 + 64);
        bf16 *p = aligned_alloc(64, 16 * lp * 2 + 64);
        bf16 *qt = aligned_alloc(64, 16 * (size_t)dh * 2 + 64);
        float *ot = aligned_alloc(64, 16 * 64 * 4);
        int ok = kp && vp && s && p && qt && ot;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        tile_config saved; /* this thread's tile configuration (oneDNN / PyTorch may cache theirs) */
        if (ok && use_amx) {
            _tile_storeconfig(&saved);
            amx_configure();
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = begin; it < end; it++) {
            const int64_t *d = docs + (it / heads) * 3;
            int h = (int)(it % heads), hk = h / group, len = (int)d[2];
            if (!ok || len == 0) continue;
            int64_t b = d[0], t0 = d[1];
            const bf16 *qd = q + b * qs[0] + h * qs[1] + t0 * qs[2], *kd = k + b * ks[0] + hk * ks[1] + t0 * ks[2];
            const bf16 *vd = v + b * vs[0] + hk * vs[1] + t0 * vs[2];
            bf16 *od = out + b * os[0] + h * os[1] + t0 * os[2];
            if (use_amx)
                attend_one_amx(qd, qs[2], kd, ks[2], vd, vs[2], od, os[2], len, dh, mult, causal, kp, vp, s, p, qt, ot,
                               lse ? lse + b * ls[0] + h * ls[1] + t0 * ls[2] : NULL, lse ? ls[2] : 0);
            else
                attend_one_avx(qd, qs[2], kd, ks[2], vd, vs[2], od, os[2], len, dh, mult, causal, kp, vp, s, p);
        }
        if (ok && use_amx) {
            if (saved.palette) _tile_loadconfig(&saved);
            else _tile_release();
        }
        free(kp); free(vp); free(s); free(p); free(qt); free(ot);
    }
    return failed ? -1 : 0;
}
