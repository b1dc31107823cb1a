/* Backward attention per (document, head) on AMX tiles. */
#include "kernels.h"

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

static inline __m512 load16_bf16(const bf16 *p) { /* 16 bf16 -> fp32 (bf16 is fp32's upper half) */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline float dot_bf16(const bf16 *a, const bf16 *b, int dh) { /* fp32 sum of a[d] b[d], dh % 16 == 0 */
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < dh; d += 16) acc = _mm512_fmadd_ps(load16_bf16(a + d), load16_bf16(b + d), acc);
    return _mm512_reduce_add_ps(acc);
}

/* out (ncol x dh, row stride ost, bf16) = scale * in^T for in (dh x l16 fp32), columns [0, ncol):
 * 16 x 16 blocks transposed in registers (kernels.h), scaled and rounded to bf16 row by row. */
static void write_transposed(const float *in, int l16, int ncol, int dh, float scale, bf16 *out, int64_t ost) {
    __m512 s = _mm512_set1_ps(scale);
    for (int j0 = 0; j0 < ncol; j0 += 16)
        for (int d0 = 0; d0 < dh; d0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(in + (size_t)(d0 + i) * l16 + j0);
            transpose16(r); /* r[c]: column j0 + c, dims d0..d0+15 */
            for (int c = 0; c < 16 && j0 + c < ncol; c++)
                _mm256_storeu_si256((__m256i *)(out + (j0 + c) * ost + d0), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(r[c], s)));
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

static void backward_one_amx(const bf16 *q, int64_t qst, const bf16 *k, int64_t kst, const bf16 *v, int64_t vst,
                             const bf16 *o, int64_t ost, const bf16 *dout, int64_t dost, const float *lse, int64_t lst,
                             bf16 *dq, int64_t dqst, bf16 *dk, int64_t dkst, bf16 *dv, int64_t dvst, int len, int dh,
                             float scale, int causal, const bwd_buffers *w) {
    const float mult = scale * 1.4426950408889634f;
    size_t slot = (size_t)((len + 31) & ~31) * dh;
    bf16 *lq = w->local, *lk = lq + slot, *lv = lk + slot, *lo_ = lv + slot, *ldo = lo_ + slot;
    copy_rows(q, qst, len, dh, 2, lq);
    copy_rows(k, kst, len, dh, 2, lk);
    copy_rows(v, vst, len, dh, 2, lv);
    copy_rows(o, ost, len, dh, 2, lo_);
    copy_rows(dout, dost, len, dh, 2, ldo);
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
        float scales[16];
        for (int r = 0; r < 16; r++) scales[r] = scale;
        amx_rows_times_pairs(w->dsrow, l32 * 2, w->kv, dh, kmax, scales, nrows, dq + i0 * dqst, dqst, w->acc); /* dQ */
    }
    amx_transposed_product(w->qT, w->dsi, l16, l32, dh, causal, w->acc); /* dK^T = Q^T dS */
    write_transposed(w->acc, l16, len, dh, scale, dk, dkst);
    amx_transposed_product(w->doT, w->pi, l16, l32, dh, causal, w->acc); /* dV^T = dO^T P */
    write_transposed(w->acc, l16, len, dh, 1.0f, dv, dvst);
}

/* Gradients of attnlab_attend_docs_bf16 (AMX path, head_dim % 32 == 0) for all its (document, head) items.
 * Tensors and strides as there; o and dout are the forward output and its gradient, lse the forward's
 * base-2 log-sum-exp. dk and dv are per QUERY head (heads x ...): with grouped KV heads the caller sums
 * each group. nthreads as in the forward. Returns 0, or -1 when a buffer could not be allocated. */
int attnlab_attend_docs_bf16_backward(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *o, const bf16 *dout,
                                      const float *lse, bf16 *dq, bf16 *dk, bf16 *dv, const int64_t *qs,
                                      const int64_t *ks, const int64_t *vs, const int64_t *os, const int64_t *dos,
                                      const int64_t *ls, const int64_t *dqs, const int64_t *dks, const int64_t *dvs,
                                      const int64_t *docs, int64_t ndocs, int heads, int kv_heads, int dh,
                                      float scale, int causal, int nthreads) {
    size_t l32 = (size_t)(max_doc_len(docs, ndocs) + 31) & ~(size_t)31, d = (size_t)dh;
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
        if (ok) amx_enter(&saved);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < ndocs * heads; it++) {
            int64_t b, t0;
            int h, hk, len = doc_item(docs, it, heads, group, &b, &t0, &h, &hk);
            if (!ok || len == 0) continue;
            backward_one_amx(q + at(qs, b, h, t0), qs[2], k + at(ks, b, hk, t0), ks[2], v + at(vs, b, hk, t0), vs[2],
                             o + at(os, b, h, t0), os[2], dout + at(dos, b, h, t0), dos[2], lse + at(ls, b, h, t0),
                             ls[2], dq + at(dqs, b, h, t0), dqs[2], dk + at(dks, b, h, t0), dks[2],
                             dv + at(dvs, b, h, t0), dvs[2], len, dh, scale, causal, &w);
        }
        if (ok) amx_leave(&saved);
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
    }
    return failed ? -1 : 0;
}

