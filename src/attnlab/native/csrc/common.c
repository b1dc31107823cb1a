/* Shared pieces of the native bf16 attention kernels: operand packing, the fp32 softmax row, AMX tile
 * setup and score tiles. See kernels.h. */
#include "kernels.h"

/* Declared in attnlab_native.h. */
void attnlab_native_exp2(const float *x, float *y, int64_t n, int fp32) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = first_n(n - i > 16 ? 16 : (int)(n - i));
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(y + i, m, fp32 ? exp2_poly(v, 1) : exp2_poly(v, 0));
    }
}

/* kp[d2 * lp + j] (32-bit pairs) = k[j, 2 d2 : 2 d2 + 2]; columns j >= len are zero. One gather per
 * 16 rows and pair (the token stride st is even, so pairs are 4-byte words). */
INTERNAL void pack_k(const bf16 *k, int64_t st, int len, int dh, int lp, int32_t *kp) {
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
INTERNAL void pack_v(const bf16 *v, int64_t st, int len, int rows, int dh, bf16 *vp) {
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

/* Row softmax numerator over [0, valid): p <- bf16(2^(s mult - max)), zeros up to `width` (even) and
 * up to the next multiple of 16 (p rows are 16-padded); returns the fp32 sum of the unrounded values
 * and stores max(s mult) in *row_max (the max of the scaled scores: right for a negative mult too). */
INTERNAL float softmax_row(const float *s, int valid, int width, bf16 *p, float mult, float *row_max) {
    __m512 mx = _mm512_set1_ps(-INFINITY), m = _mm512_set1_ps(mult);
    int j = 0;
    for (; j + 16 <= valid; j += 16) mx = _mm512_max_ps(mx, _mm512_mul_ps(_mm512_loadu_ps(s + j), m));
    __mmask16 tail = first_n(valid - j);
    if (tail) mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_mul_ps(_mm512_loadu_ps(s + j), m));
    *row_max = _mm512_reduce_max_ps(mx);
    __m512 off = _mm512_set1_ps(*row_max);
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


/* Every tile 16 rows x 64 bytes: Q (16 x 32 bf16), K pairs (16 x 16 pairs), scores / outputs (16 x 16 fp32),
 * P (16 x 32 bf16), V pairs (16 key pairs x 16 dims x 2). Tile state is per thread: set on every call. */
INTERNAL void amx_configure(void) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    tile_load_config(&c);
}

/* Keep this thread's tile configuration (oneDNN / PyTorch cache theirs per thread) and load ours ... */
INTERNAL void amx_enter(tile_config *saved) {
    tile_store_config(saved);
    amx_configure();
}

/* ... and put theirs back (or release the tiles if there was none). */
INTERNAL void amx_leave(const tile_config *saved) {
    if (saved->palette) tile_load_config(saved);
    else _tile_release();
}

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
INTERNAL void amx_scores(const bf16 *a, int64_t astride, const int32_t *kp, int l16, int ncols, int dh, float *out,
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

/* A 16-row A operand from rows [i0, i0 + nrows) of src (stride st): the rows in place, or a zero-padded
 * copy in buf (16 x dh) for the last tile so no load leaves the tensor. Returns the pointer; *stride bytes. */
INTERNAL const bf16 *tile_rows(const bf16 *src, int64_t st, int i0, int nrows, int dh, bf16 *buf, int64_t *stride) {
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


/* out[r][0 : dh] = bf16(row_scale[r] * sum_k a[r][k] b[k][:]) for rows r < nrows: `a` is 16 rows x kmax
 * (a multiple of 32; row stride astride bytes), b the keys interleaved in pairs (pack_v layout). Tiles:
 * A 3, B 2, accumulators 4-7 (64 output dims per pass, head_dim % 32 == 0); scratch 16 x 64 fp32. Used for
 * P @ V in the forward and dS @ K in the backward. */
INTERNAL void amx_rows_times_pairs(const bf16 *a, int64_t astride, const bf16 *bp, int dh, int kmax,
                                   const float *row_scale, int nrows, bf16 *out, int64_t ost, float *scratch) {
    for (int d0 = 0; d0 < dh; d0 += 64) {
        int nt = (dh - d0) / 16 < 4 ? (dh - d0) / 16 : 4;
        _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
        for (int kk = 0; kk < kmax; kk += 32) {
            _tile_loadd(3, a + kk, astride);
            const bf16 *b = bp + ((size_t)(kk / 2) * dh + d0) * 2;
            _tile_loadd(2, b, dh * 4); _tile_dpbf16ps(4, 3, 2);
            _tile_loadd(2, b + 32, dh * 4); _tile_dpbf16ps(5, 3, 2);
            if (nt > 2) { _tile_loadd(2, b + 64, dh * 4); _tile_dpbf16ps(6, 3, 2); }
            if (nt > 3) { _tile_loadd(2, b + 96, dh * 4); _tile_dpbf16ps(7, 3, 2); }
        }
        _tile_stored(4, scratch, 256);
        _tile_stored(5, scratch + 16, 256);
        if (nt > 2) _tile_stored(6, scratch + 32, 256);
        if (nt > 3) _tile_stored(7, scratch + 48, 256);
        for (int r = 0; r < nrows; r++) {
            __m512 sc = _mm512_set1_ps(row_scale[r]);
            for (int t = 0; t < nt; t++) {
                __m512 x = _mm512_mul_ps(_mm512_loadu_ps(scratch + r * 64 + 16 * t), sc);
                _mm256_storeu_si256((__m256i *)(out + r * ost + d0 + 16 * t), (__m256i)_mm512_cvtneps_pbh(x));
            }
        }
    }
}
