/* Forward attention per (document, head): the AVX-512 BF16 path (inference on CPUs without AMX) and the
 * AMX path (inference and training; it can store each row's log-sum-exp for backward.c). */
#include "kernels.h"

#define ROWS 8 /* AVX-512 path: query rows per block; 2 * ROWS accumulators in flight hide vdpbf16ps's latency */

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
        int64_t qstride; /* A operand: 16 query rows in place, or a zero-padded copy of the last ones */
        const bf16 *qa = tile_rows(q, qst, i0, nrows, dh, qt, &qstride);
        int last = i0 + nrows;                                   /* causal: keys < last are enough */
        int ncols = causal ? ((last + 15) & ~15) : l16;          /* score columns computed */
        int kmax = causal ? ((last + 31) & ~31) : l32;           /* keys P @ V reads (zero-padded) */
        amx_scores(qa, qstride, kp, l16, ncols, dh, s, l32);
        float inv[16];
        for (int r = 0; r < nrows; r++) {
            int valid = causal ? i0 + r + 1 : len;
            float row_max, sum = softmax_row(s + r * l32, valid, kmax, p + r * l32, mult, &row_max);
            inv[r] = 1.0f / sum;
            if (lse) lse[(i0 + r) * lst] = row_max + log2f(sum); /* base-2 log-sum-exp, for backward */
        }
        for (int r = nrows; r < 16; r++) memset(p + r * l32, 0, (size_t)kmax * 2);
        amx_rows_times_pairs(p, l32 * 2, vp, dh, kmax, inv, nrows, o + i0 * ost, ost, ot); /* out = P V / sum */
    }
}

/* Attend every (document, head) item of the grid, item = doc * heads + head, for the ndocs documents.
 * q, k, v, out: element offsets b * s?b + h * s?h + t * s?t (+ d). kv head = head / (heads / kv_heads).
 * use_amx: 1 for the AMX path (caps bit 1 and head_dim % 32 == 0), 0 for AVX-512 BF16.
 * lse: NULL, or (AMX path) the per-row base-2 log-sum-exp of the scaled scores at at(ls, b, h, t), which
 * the backward pass needs. nthreads: OpenMP threads; the items are dealt out one at a
 * time. Linked against libgomp.so.1, this is the team PyTorch's own OpenMP runtime keeps (its spinning
 * workers would otherwise compete with any threads of ours).
 * Returns 0, or -1 when a buffer could not be allocated. */
int attnlab_attend_docs_bf16(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out, const int64_t *qs,
                             const int64_t *ks, const int64_t *vs, const int64_t *os, const int64_t *docs,
                             int64_t ndocs, int heads, int kv_heads, int dh, float scale, int causal, int use_amx,
                             float *lse, const int64_t *ls, int nthreads) {
    size_t lp = (size_t)(max_doc_len(docs, ndocs) + 31) & ~(size_t)31; /* sizes below: multiples of 64 bytes */
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
        tile_config saved;
        if (ok && use_amx) amx_enter(&saved);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < ndocs * heads; it++) {
            int64_t b, t0;
            int h, hk, len = doc_item(docs, it, heads, group, &b, &t0, &h, &hk);
            if (!ok || len == 0) continue;
            const bf16 *qd = q + at(qs, b, h, t0), *kd = k + at(ks, b, hk, t0), *vd = v + at(vs, b, hk, t0);
            bf16 *od = out + at(os, b, h, t0);
            if (use_amx)
                attend_one_amx(qd, qs[2], kd, ks[2], vd, vs[2], od, os[2], len, dh, mult, causal, kp, vp, s, p, qt, ot,
                               lse ? lse + at(ls, b, h, t0) : NULL, lse ? ls[2] : 0);
            else
                attend_one_avx(qd, qs[2], kd, ks[2], vd, vs[2], od, os[2], len, dh, mult, causal, kp, vp, s, p);
        }
        if (ok && use_amx) amx_leave(&saved);
        free(kp); free(vp); free(s); free(p); free(qt); free(ot);
    }
    return failed ? -1 : 0;
}
