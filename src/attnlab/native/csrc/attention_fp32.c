/* Exact softmax attention per (document, head) in fp32 on AVX-512 FMA: forward (inference and training,
 * with each row's log-sum-exp) and backward (FlashAttention-2's equations from that log-sum-exp).
 *
 * Why: PyTorch's CPU flash kernel runs fp32 causal attention at GPT sizes (256 tokens, head size 64)
 * at ~45 GFLOP/s forward and ~55 GFLOP/s backward on this 2-core machine (fp32 matmul peak ~210), a
 * seventh of a whole fp32 training step. Here each (document, head) is done whole (up to 1,024 tokens;
 * a 256-token head's scores and probabilities fit in L2): its strided head slices are first copied
 * contiguous (read cold, strided rows arrive one cache miss at a time), then come a handful of small
 * matrix products over fp32 buffers, each run by one register-blocked micro-kernel (MR rows x 64
 * columns of accumulators, one broadcast and 4 FMAs per row and step), with the masked halves of causal
 * products skipped at MR-row granularity. 2.0x SDPA forward, 1.85x forward + backward at 256 tokens
 * (benchmarks/native_attention_fp32.py).
 *
 * Precision: scores, softmax and products in fp32; exp via 2^x with a degree-6 polynomial (relative
 * error <= 1.2e-7, fp32's own rounding), probabilities kept unrounded. Results match the float64 formula
 * to fp32 rounding of the sums (tests/attention/test_native_fp32.py).
 * Layout contract (checked in Python): unit stride along the head dimension, head_dim a multiple of 16
 * and at most 256; docs are (batch row, first token, length), as in forward.c.
 */
#include "kernels.h"
#include "fp32_blocks.h"

/* One (document, head): q rows [0, len) against k, v rows [0, len). kt: dh x lp, s: MR x lp (lp = len
 * rounded up to 16). lse (stride lst), when not NULL, receives each row's base-2 log-sum-exp of the
 * scaled scores (log2 sum_j e^(scale q_i . k_j)); the scale is applied in the product, so any sign works. */
static void forward_one(const float *q, int64_t qst, const float *k, int64_t kst, const float *v, int64_t vst,
                        float *o, int64_t ost, int len, int dh, float scale, int causal, float *kt, float *ql,
                        float *vl, float *s, float *lse, int64_t lst) {
    const float scales[MR] = {scale, scale, scale, scale, scale, scale}, mult = 1.4426950408889634f; /* log2 e */
    int lp = (len + 15) & ~15;
    transpose_f32(k, kst, len, dh, lp, kt);
    if (qst != dh) { /* strided head slices of Q and V in contiguous copies */
        copy_rows(q, qst, len, dh, 4, ql);
        q = ql, qst = dh;
    }
    if (vst != dh) {
        copy_rows(v, vst, len, dh, 4, vl);
        v = vl, vst = dh;
    }
    for (int i0 = 0; i0 < len; i0 += MR) {
        int nrows = len - i0 < MR ? len - i0 : MR, ncols = causal ? i0 + nrows : len;
        rows_product(q + i0 * qst, qst, 1, dh, kt, lp, (ncols + 15) & ~15, s, lp, nrows, scales); /* S = scale Q K^T */
        float inv[MR];
        for (int r = 0; r < nrows; r++) {
            float row_max, sum = softmax_row_f32(s + r * lp, causal ? i0 + r + 1 : len, ncols, mult, &row_max);
            inv[r] = 1.0f / sum;
            if (lse) lse[(i0 + r) * lst] = row_max * mult + log2f(sum);
        }
        rows_product(s, lp, 1, ncols, v, vst, dh, o + i0 * ost, ost, nrows, inv); /* O = P V / sum */
    }
}

/* Forward over every (document, head) item, item = doc * heads + head; kv head = head / (heads / kv_heads).
 * Offsets and strides as in attnlab_attend_docs_bf16 (forward.c); lse: NULL or the (b, h, t)-strided
 * base-2 log-sum-exp for the backward. Returns 0, or -1 when a buffer could not be allocated. */
int attnlab_attend_docs_f32(const float *q, const float *k, const float *v, float *out, const int64_t *qs,
                            const int64_t *ks, const int64_t *vs, const int64_t *os, const int64_t *docs,
                            int64_t ndocs, int heads, int kv_heads, int dh, float scale, int causal, float *lse,
                            const int64_t *ls, int nthreads) {
    size_t lp = (size_t)(max_doc_len(docs, ndocs) + 15) & ~(size_t)15;
    int group = heads / kv_heads, failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *kt = aligned_alloc(64, lp * dh * 4 + 64), *ql = aligned_alloc(64, lp * dh * 4 + 64);
        float *vl = aligned_alloc(64, lp * dh * 4 + 64), *s = aligned_alloc(64, MR * lp * 4 + 64);
        int ok = kt && ql && vl && s;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < ndocs * heads; it++) {
            int64_t b, t0;
            int h, hk, len = doc_item(docs, it, heads, group, &b, &t0, &h, &hk);
            if (!ok || len == 0) continue;
            forward_one(q + at(qs, b, h, t0), qs[2], k + at(ks, b, hk, t0), ks[2], v + at(vs, b, hk, t0), vs[2],
                        out + at(os, b, h, t0), os[2], len, dh, scale, causal, kt, ql, vl, s,
                        lse ? lse + at(ls, b, h, t0) : NULL, lse ? ls[2] : 0);
        }
        free(kt); free(ql); free(vl); free(s);
    }
    return failed ? -1 : 0;
}

/* ---- backward ---------------------------------------------------------------------------------------
 * With S = scale Q K^T, P = softmax(S) (recomputed from the forward's log-sum-exp), dP = dO V^T and
 * D_i = sum_j P_ij dP_ij (FlashAttention's dO_i . O_i, here from the same dP, so each row of dS sums to 0
 * up to rounding and the forward's output is not needed):
 *   dS = P o (dP - D),  dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO.
 * Row blocks of MR queries form S, dP, then P and dS (kept whole: len x lp each) and dQ; then blocks of
 * MR keys form dK and dV from the stored P and dS columns (A^T B through the micro-kernel's strides).
 * Causal: P and dS are zero above the diagonal, stored up to each row block's last column. */
static void backward_one(const float *q, int64_t qst, const float *k, int64_t kst, const float *v, int64_t vst,
                         const float *dout, int64_t dost, const float *lse, int64_t lst,
                         float *dq, int64_t dqst, float *dk, int64_t dkst, float *dv, int64_t dvst, int len, int dh,
                         float scale, int causal, float *local, float *kt, float *vt, float *pm, float *dsm,
                         float *dp) {
    const float ones[MR] = {1, 1, 1, 1, 1, 1}, scales[MR] = {scale, scale, scale, scale, scale, scale};
    const float mult = 1.4426950408889634f; /* log2 e: P = 2^(S log2 e - lse) */
    int lp = (len + 15) & ~15;
    float *ql = local, *kl = ql + (size_t)lp * dh, *dol = kl + (size_t)lp * dh;
    copy_rows(q, qst, len, dh, 4, ql); /* Q, K, dO: read whole several times, from contiguous copies */
    copy_rows(k, kst, len, dh, 4, kl);
    copy_rows(dout, dost, len, dh, 4, dol);
    q = ql, k = kl, dout = dol, qst = kst = dost = dh;
    transpose_f32(k, kst, len, dh, lp, kt);
    transpose_f32(v, vst, len, dh, lp, vt);
    for (int i0 = 0; i0 < len; i0 += MR) {
        int nrows = len - i0 < MR ? len - i0 : MR, ncols = causal ? i0 + nrows : len, n16 = (ncols + 15) & ~15;
        float *pr = pm + (int64_t)i0 * lp, *dsr = dsm + (int64_t)i0 * lp;
        rows_product(q + i0 * qst, qst, 1, dh, kt, lp, n16, pr, lp, nrows, scales);     /* S = scale Q K^T */
        rows_product(dout + i0 * dost, dost, 1, dh, vt, lp, n16, dp, lp, nrows, ones);  /* dP = dO V^T */
        for (int r = 0; r < nrows; r++) {
            int i = i0 + r, valid = causal ? i + 1 : len;
            __m512 l = _mm512_set1_ps(lse[i * lst]), m = _mm512_set1_ps(mult), acc = _mm512_setzero_ps();
            float *p = pr + r * lp, *ds = dsr + r * lp, *dpr = dp + r * lp;
            for (int j = 0; j < ncols; j += 16) { /* P, and D = sum_j P dP (= dO . O, from the same dP) */
                __mmask16 keep = first_n(valid - j), in = first_n(ncols - j);
                __m512 e = _mm512_maskz_mov_ps(keep, exp2_poly(_mm512_fmsub_ps(_mm512_loadu_ps(p + j), m, l), 1));
                _mm512_mask_storeu_ps(p + j, in, e);
                acc = _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(keep, dpr + j), acc);
            }
            __m512 D = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
            for (int j = 0; j < ncols; j += 16) {
                __mmask16 in = first_n(ncols - j);
                __m512 e = _mm512_maskz_loadu_ps(in, p + j);
                _mm512_mask_storeu_ps(ds + j, in, _mm512_mul_ps(e, _mm512_sub_ps(_mm512_maskz_loadu_ps(in, dpr + j), D)));
            }
        }
        rows_product(dsr, lp, 1, ncols, k, kst, dh, dq + i0 * dqst, dqst, nrows, scales); /* dQ = scale dS K */
    }
    for (int j0 = 0; j0 < len; j0 += MR) { /* key blocks: queries from j0 on (causal) see them */
        int nrows = len - j0 < MR ? len - j0 : MR, first = causal ? j0 : 0;
        rows_product(pm + (int64_t)first * lp + j0, 1, lp, len - first, dout + first * dost, dost, dh,
                     dv + j0 * dvst, dvst, nrows, ones);                                   /* dV = P^T dO */
        rows_product(dsm + (int64_t)first * lp + j0, 1, lp, len - first, q + first * qst, qst, dh,
                     dk + j0 * dkst, dkst, nrows, scales);                                 /* dK = scale dS^T Q */
    }
}

/* Gradients of attnlab_attend_docs_f32 for all its (document, head) items; tensors and strides as there,
 * dout the gradient of the forward's output, lse the forward's base-2 log-sum-exp. dk and dv are per
 * QUERY head: with grouped KV heads the caller sums each group. Returns 0, or -1 when a buffer could not
 * be allocated. */
int attnlab_attend_docs_f32_backward(const float *q, const float *k, const float *v, const float *dout,
                                     const float *lse, float *dq, float *dk, float *dv, const int64_t *qs,
                                     const int64_t *ks, const int64_t *vs, const int64_t *dos, const int64_t *ls, const int64_t *dqs, const int64_t *dks,
                                     const int64_t *dvs, const int64_t *docs, int64_t ndocs, int heads, int kv_heads,
                                     int dh, float scale, int causal, int nthreads) {
    size_t len = (size_t)max_doc_len(docs, ndocs), lp = (len + 15) & ~(size_t)15, d = (size_t)dh;
    int group = heads / kv_heads, failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *kt = aligned_alloc(64, lp * d * 4 + 64), *vt = aligned_alloc(64, lp * d * 4 + 64);
        float *pm = aligned_alloc(64, len * lp * 4 + 64), *dsm = aligned_alloc(64, len * lp * 4 + 64);
        float *dp = aligned_alloc(64, MR * lp * 4 + 64), *local = aligned_alloc(64, 3 * lp * d * 4 + 64);
        int ok = kt && vt && pm && dsm && dp && local;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < ndocs * heads; it++) {
            int64_t b, t0;
            int h, hk, n = doc_item(docs, it, heads, group, &b, &t0, &h, &hk);
            if (!ok || n == 0) continue;
            backward_one(q + at(qs, b, h, t0), qs[2], k + at(ks, b, hk, t0), ks[2], v + at(vs, b, hk, t0), vs[2],
                         dout + at(dos, b, h, t0), dos[2], lse + at(ls, b, h, t0), ls[2],
                         dq + at(dqs, b, h, t0), dqs[2], dk + at(dks, b, h, t0), dks[2], dv + at(dvs, b, h, t0),
                         dvs[2], n, dh, scale, causal, local, kt, vt, pm, dsm, dp);
        }
        free(kt); free(vt); free(pm); free(dsm); free(dp); free(local);
    }
    return failed ? -1 : 0;
}
