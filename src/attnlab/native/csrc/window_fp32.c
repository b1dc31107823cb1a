/* Swin window attention in fp32 on AVX-512 FMA, forward (with each row's log-sum-exp for training) and backward
 * (FlashAttention-2's equations, as attention_fp32.c, plus the bias gradient): exact softmax attention inside each
 * window of n tokens, with an additive bias per (head, window) (the relative position bias and the shifted-window
 * mask, -inf where forbidden).
 *
 * Why: in PyTorch a Swin window attention is three gathers of q, k and v into window order (the cyclic shift and
 * the partition are one permutation of the tokens), two batched matrix products, the bias add, the softmax and a
 * gather back: six passes over memory around small products. Here each (image, window, head) is done whole in
 * cache: its n rows of q, k and v are read straight from the raster-order tensors through the window's token
 * list, the products run on the micro-kernel of fp32_blocks.h, and the output rows are written back to their
 * raster positions.
 *
 * Precision: as attention_fp32.c (fp32 scores, softmax via a degree-6 exp2 polynomial, relative error
 * <= 1.2e-7). A -inf bias gives weight 2^-125 (the polynomial's floor) instead of 0: below fp32's resolution
 * next to the row's own token, which every row keeps.
 * Layout contract (checked in Python): unit stride along the head dimension, head_dim a multiple of 16 and at
 * most 256; order holds a permutation of the T tokens (window w is order[w n .. (w + 1) n)); bias is NULL or
 * n x n blocks at head stride bhs and window stride bws (0 to broadcast).
 */
#include <omp.h>

#include "kernels.h"
#include "fp32_blocks.h"

/* dst row i = src row idx[i] (row stride st), for i < n: dh floats each. */
static void gather_rows(const float *src, int64_t st, const int64_t *idx, int n, int dh, float *dst) {
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * dh, src + idx[i] * st, (size_t)dh * 4);
}

/* dst row idx[i] (row stride st) = src row i, for i < n: dh floats each. */
static void scatter_rows(const float *src, const int64_t *idx, int n, int dh, float *dst, int64_t st) {
    for (int i = 0; i < n; i++) memcpy(dst + idx[i] * st, src + (size_t)i * dh, (size_t)dh * 4);
}

/* A window's rows of q, k and v into local (three n x dh blocks, in that order), and K^T into kt (dh x lp, zero
 * past n; lp = n rounded up to 16). */
static void gather_window(const float *q, int64_t qst, const float *k, int64_t kst, const float *v, int64_t vst,
                          const int64_t *idx, int n, int dh, float *local, float *kt) {
    size_t rows = (size_t)n * dh;
    gather_rows(q, qst, idx, n, dh, local);
    gather_rows(k, kst, idx, n, dh, local + rows);
    gather_rows(v, vst, idx, n, dh, local + 2 * rows);
    transpose_f32(local + rows, dh, n, dh, (n + 15) & ~15, kt);
}

/* row[j] += b[j] for j < n. */
static void add_row(float *row, const float *b, int n) {
    for (int j = 0; j < n; j += 16) {
        __mmask16 in = first_n(n - j);
        _mm512_mask_storeu_ps(row + j, in, _mm512_add_ps(_mm512_maskz_loadu_ps(in, row + j), _mm512_maskz_loadu_ps(in, b + j)));
    }
}

/* One (image, window, head): q, k, v, o (and lse, when not NULL: each row's base-2 log-sum-exp of its biased
 * scores, at stride lst) point at the head's token 0; idx lists the window's n tokens. Buffers: local 4 n x dh
 * (ql, kl, vl, ol), kt dh x lp, s MR x lp (lp = n rounded up to 16). */
static void window_one(const float *q, int64_t qst, const float *k, int64_t kst, const float *v, int64_t vst,
                       float *o, int64_t ost, float *lse, int64_t lst, const int64_t *idx, int n, int dh, float scale,
                       const float *bias, float *local, float *kt, float *s) {
    const float scales[MR] = {scale, scale, scale, scale, scale, scale}, mult = 1.4426950408889634f; /* log2 e */
    int lp = (n + 15) & ~15;
    size_t rows = (size_t)n * dh;
    float *ql = local, *kl = ql + rows, *vl = kl + rows, *ol = vl + rows;
    gather_window(q, qst, k, kst, v, vst, idx, n, dh, local, kt);
    for (int i0 = 0; i0 < n; i0 += MR) {
        int nrows = n - i0 < MR ? n - i0 : MR;
        rows_product(ql + (size_t)i0 * dh, dh, 1, dh, kt, lp, lp, s, lp, nrows, scales); /* S = scale Q K^T */
        float inv[MR];
        for (int r = 0; r < nrows; r++) {
            float *row = s + r * lp, row_max;
            if (bias) add_row(row, bias + (int64_t)(i0 + r) * n, n);
            float sum = softmax_row_f32(row, n, lp, mult, &row_max);
            inv[r] = 1.0f / sum;
            if (lse) lse[idx[i0 + r] * lst] = row_max * mult + log2f(sum);
        }
        rows_product(s, lp, 1, n, vl, dh, dh, ol + (size_t)i0 * dh, dh, nrows, inv); /* O = P V / sum */
    }
    scatter_rows(ol, idx, n, dh, o, ost);
}

/* ---- backward ---------------------------------------------------------------------------------------
 * With S = scale Q K^T + bias, P = 2^(S log2 e - lse), dP = dO V^T, D_i = sum_j P_ij dP_ij:
 *   dS = P o (dP - D),  dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO,  dbias = dS.
 * One (image, window, head): rows gathered through idx, P and dS kept whole (n x lp), gradients scattered back
 * to the rows' raster positions; dbias (n x n), when not NULL, accumulates dS. local: 5 n x dh buffers. */
static void window_backward_one(const float *q, int64_t qst, const float *k, int64_t kst, const float *v,
                                int64_t vst, const float *dout, int64_t dost, const float *lse, int64_t lst,
                                float *dq, int64_t dqst, float *dk, int64_t dkst, float *dv, int64_t dvst,
                                const int64_t *idx, int n, int dh, float scale, const float *bias, float *dbias,
                                float *local, float *kt, float *vt, float *pm, float *dsm, float *dp) {
    const float ones[MR] = {1, 1, 1, 1, 1, 1}, scales[MR] = {scale, scale, scale, scale, scale, scale};
    const float mult = 1.4426950408889634f; /* log2 e */
    int lp = (n + 15) & ~15;
    size_t rows = (size_t)n * dh;
    float *ql = local, *kl = ql + rows, *vl = kl + rows, *dol = vl + rows, *g = dol + rows;
    gather_window(q, qst, k, kst, v, vst, idx, n, dh, local, kt);
    gather_rows(dout, dost, idx, n, dh, dol);
    transpose_f32(vl, dh, n, dh, lp, vt);
    for (int i0 = 0; i0 < n; i0 += MR) {
        int nrows = n - i0 < MR ? n - i0 : MR;
        float *pr = pm + (int64_t)i0 * lp, *dsr = dsm + (int64_t)i0 * lp;
        rows_product(ql + (size_t)i0 * dh, dh, 1, dh, kt, lp, lp, pr, lp, nrows, scales);  /* scale Q K^T */
        rows_product(dol + (size_t)i0 * dh, dh, 1, dh, vt, lp, lp, dp, lp, nrows, ones);   /* dP = dO V^T */
        for (int r = 0; r < nrows; r++) {
            int i = i0 + r;
            float *p = pr + r * lp, *ds = dsr + r * lp, *dpr = dp + r * lp;
            if (bias) add_row(p, bias + (int64_t)i * n, n);
            __m512 l = _mm512_set1_ps(lse[idx[i] * lst]), m = _mm512_set1_ps(mult), acc = _mm512_setzero_ps();
            for (int j = 0; j < lp; j += 16) { /* P (zero past n), and D = sum_j P dP */
                __mmask16 keep = first_n(n - j);
                __m512 e = _mm512_maskz_mov_ps(keep, exp2_poly(_mm512_fmsub_ps(_mm512_loadu_ps(p + j), m, l), 1));
                _mm512_storeu_ps(p + j, e);
                acc = _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(keep, dpr + j), acc);
            }
            __m512 D = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
            for (int j = 0; j < lp; j += 16)
                _mm512_storeu_ps(ds + j, _mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_sub_ps(_mm512_loadu_ps(dpr + j), D)));
        }
        rows_product(dsr, lp, 1, n, kl, dh, dh, g + (size_t)i0 * dh, dh, nrows, scales); /* dQ = scale dS K */
    }
    scatter_rows(g, idx, n, dh, dq, dqst);
    for (int j0 = 0; j0 < n; j0 += MR) { /* key blocks: dV = P^T dO */
        int nrows = n - j0 < MR ? n - j0 : MR;
        rows_product(pm + j0, 1, lp, n, dol, dh, dh, g + (size_t)j0 * dh, dh, nrows, ones);
    }
    scatter_rows(g, idx, n, dh, dv, dvst);
    for (int j0 = 0; j0 < n; j0 += MR) { /* dK = scale dS^T Q */
        int nrows = n - j0 < MR ? n - j0 : MR;
        rows_product(dsm + j0, 1, lp, n, ql, dh, dh, g + (size_t)j0 * dh, dh, nrows, scales);
    }
    scatter_rows(g, idx, n, dh, dk, dkst);
    if (dbias)
        for (int i = 0; i < n; i++) add_row(dbias + (int64_t)i * n, dsm + (int64_t)i * lp, n);
}

/* One call of either kernel: the tensors and their (batch, head, token) strides (unit stride along dh), the
 * window order and bias as in the header comment. dout NULL: the forward (out, and lse when not NULL); else the
 * backward from lse (dq, and dk and dv per QUERY head; dbias: NULL or one zeroed block of dbias_size floats per
 * thread, laid out as the bias, which the caller sums). */
struct window_call {
    const float *q, *k, *v, *dout, *bias;
    float *out, *lse, *dq, *dk, *dv, *dbias;
    const int64_t *qs, *ks, *vs, *os, *ls, *dos, *dqs, *dks, *dvs, *order;
    int64_t bhs, bws, dbias_size, batch, windows;
    int n, heads, kv_heads, dh;
    float scale;
};

/* One (image, window, head) item, it = (b * windows + w) * heads + h; kv head = h / (heads / kv_heads). */
static void window_item(const struct window_call *c, int64_t it, float *mine, float *local, float *kt, float *vt,
                        float *pm, float *dsm, float *dp) {
    int64_t bw = it / c->heads, b = bw / c->windows, w = bw % c->windows;
    int h = (int)(it % c->heads), hk = h / (c->heads / c->kv_heads), n = c->n, dh = c->dh;
    const float *q = c->q + at(c->qs, b, h, 0), *k = c->k + at(c->ks, b, hk, 0), *v = c->v + at(c->vs, b, hk, 0);
    const float *bias = c->bias ? c->bias + h * c->bhs + w * c->bws : NULL;
    const int64_t *idx = c->order + w * n;
    if (!c->dout) {
        window_one(q, c->qs[2], k, c->ks[2], v, c->vs[2], c->out + at(c->os, b, h, 0), c->os[2],
                   c->lse ? c->lse + at(c->ls, b, h, 0) : NULL, c->lse ? c->ls[2] : 0, idx, n, dh, c->scale, bias,
                   local, kt, dp);
        return;
    }
    window_backward_one(q, c->qs[2], k, c->ks[2], v, c->vs[2], c->dout + at(c->dos, b, h, 0), c->dos[2],
                        c->lse + at(c->ls, b, h, 0), c->ls[2], c->dq + at(c->dqs, b, h, 0), c->dqs[2],
                        c->dk + at(c->dks, b, h, 0), c->dks[2], c->dv + at(c->dvs, b, h, 0), c->dvs[2], idx, n, dh,
                        c->scale, bias, mine ? mine + h * c->bhs + w * c->bws : NULL, local, kt, vt, pm, dsm, dp);
}

/* Every item of a call on nthreads threads, each with its own buffers. Returns 0, or -1 when a buffer could not
 * be allocated. */
static int run_windows(const struct window_call *c, int nthreads) {
    size_t lp = (size_t)(c->n + 15) & ~(size_t)15, n = (size_t)c->n, dh = (size_t)c->dh;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *kt = aligned_alloc(64, lp * dh * 4 + 64), *vt = aligned_alloc(64, lp * dh * 4 + 64);
        float *pm = aligned_alloc(64, n * lp * 4 + 64), *dsm = aligned_alloc(64, n * lp * 4 + 64);
        float *dp = aligned_alloc(64, MR * lp * 4 + 64), *local = aligned_alloc(64, 5 * n * dh * 4 + 64);
        float *mine = c->dbias ? c->dbias + omp_get_thread_num() * c->dbias_size : NULL;
        int ok = kt && vt && pm && dsm && dp && local;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (int64_t it = 0; it < c->batch * c->windows * c->heads; it++)
            if (ok) window_item(c, it, mine, local, kt, vt, pm, dsm, dp);
        free(kt); free(vt); free(pm); free(dsm); free(dp); free(local);
    }
    return failed ? -1 : 0;
}

/* The forward over every (image, window, head); lse: NULL or the (b, h, t)-strided base-2 log-sum-exp for the
 * backward. */
int attnlab_attend_windows_f32(const float *q, const float *k, const float *v, float *out, const int64_t *qs,
                               const int64_t *ks, const int64_t *vs, const int64_t *os, const int64_t *order,
                               const float *bias, int64_t bhs, int64_t bws, float *lse, const int64_t *ls,
                               int64_t batch, int64_t windows, int n, int heads, int kv_heads, int dh, float scale,
                               int nthreads) {
    struct window_call c = {.q = q, .k = k, .v = v, .bias = bias, .out = out, .lse = lse, .qs = qs, .ks = ks,
                            .vs = vs, .os = os, .ls = ls, .order = order, .bhs = bhs, .bws = bws, .batch = batch,
                            .windows = windows, .n = n, .heads = heads, .kv_heads = kv_heads, .dh = dh,
                            .scale = scale};
    return run_windows(&c, nthreads);
}

/* Gradients of attnlab_attend_windows_f32 from its lse; dout the gradient of its output (see window_call). */
int attnlab_attend_windows_f32_backward(const float *q, const float *k, const float *v, const float *dout,
                                        const float *lse, float *dq, float *dk, float *dv, const int64_t *qs,
                                        const int64_t *ks, const int64_t *vs, const int64_t *dos, const int64_t *ls,
                                        const int64_t *dqs, const int64_t *dks, const int64_t *dvs,
                                        const int64_t *order, const float *bias, int64_t bhs, int64_t bws,
                                        float *dbias, int64_t dbias_size, int64_t batch, int64_t windows, int n,
                                        int heads, int kv_heads, int dh, float scale, int nthreads) {
    struct window_call c = {.q = q, .k = k, .v = v, .dout = dout, .bias = bias, .lse = (float *)lse, .dq = dq,
                            .dk = dk, .dv = dv, .dbias = dbias, .qs = qs, .ks = ks, .vs = vs, .ls = ls, .dos = dos,
                            .dqs = dqs, .dks = dks, .dvs = dvs, .order = order, .bhs = bhs, .bws = bws,
                            .dbias_size = dbias_size, .batch = batch, .windows = windows, .n = n, .heads = heads,
                            .kv_heads = kv_heads, .dh = dh, .scale = scale};
    return run_windows(&c, nthreads);
}
