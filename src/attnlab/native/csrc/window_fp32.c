/* Swin window attention in fp32 arithmetic on AVX-512 FMA (fp32 or bf16 tensors), forward (with each row's
 * log-sum-exp for training) and backward (FlashAttention-2's equations, as attention_fp32.c, plus the bias
 * gradient): exact softmax attention inside each window of n tokens, with an additive bias per (head, window) (the
 * relative position bias and the shifted-window mask, -inf where forbidden).
 *
 * Why: in PyTorch a Swin window attention is three gathers of q, k and v into window order (the cyclic shift and
 * the partition are one permutation of the tokens), two batched matrix products, the bias add, the softmax and a
 * gather back: six passes over memory around small products. Here each (image, window, head) is done whole in
 * cache: its n rows of q, k and v are read straight from the raster-order tensors through the window's token
 * list, the products run on the micro-kernel of fp32_blocks.h, and the output rows are written back to their
 * raster positions.
 *
 * Precision: as attention_fp32.c (fp32 scores, softmax via a degree-6 exp2 polynomial, relative error
 * <= 1.2e-7); bf16 tensors (autocast) are read into fp32 and the results rounded to bf16 once (nearest even).
 * A -inf bias gives weight 2^-125 (the polynomial's floor) instead of 0: below fp32's resolution next to the
 * row's own token, which every row keeps.
 * Layout contract (checked in Python): unit stride along the head dimension, head_dim a multiple of 16 and at
 * most 256; order holds a permutation of the T tokens (window w is order[w n .. (w + 1) n)); bias is NULL or
 * n x n blocks at head stride bhs and window stride bws (0 to broadcast).
 */
#include <omp.h>

#include "kernels.h"
#include "fp32_blocks.h"

/* A head's rows in a (batch, head, token)-strided tensor of fp32 or bf16 elements: the address of its token 0
 * and the token stride in elements. */
typedef struct {
    char *p;
    int64_t st;
    int bf;
} rows_t;

static inline rows_t head_rows(const void *t, const int64_t *s, int64_t b, int64_t h, int bf) {
    rows_t r = {(char *)t + at(s, b, h, 0) * (bf ? 2 : 4), s[2], bf};
    return r;
}

/* 16 elements at row + d as fp32 (bf16: the upper half of an fp32; AVX-512F only). */
static inline __m512 load16(rows_t r, int64_t row, int d) {
    char *p = r.p + (row * r.st + d) * (r.bf ? 2 : 4);
    if (!r.bf) return _mm512_loadu_ps((const float *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* Stores 16 fp32 at row + d (bf16: rounded to nearest even, NaN kept NaN; AVX-512F only). */
static inline void store16(rows_t r, int64_t row, int d, __m512 v) {
    char *p = r.p + (row * r.st + d) * (r.bf ? 2 : 4);
    if (!r.bf) {
        _mm512_storeu_ps((float *)p, v);
        return;
    }
    __m512i x = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i up = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
    up = _mm512_mask_mov_epi32(up, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(up));
}

/* dst row i (fp32, dh wide) = src row idx[i], for i < n (dh % 16 == 0). */
static void gather_rows(rows_t src, const int64_t *idx, int n, int dh, float *dst) {
    for (int i = 0; i < n; i++)
        for (int d = 0; d < dh; d += 16) _mm512_storeu_ps(dst + (size_t)i * dh + d, load16(src, idx[i], d));
}

/* dst row idx[i] = src row i (fp32, dh wide), for i < n (dh % 16 == 0). */
static void scatter_rows(const float *src, const int64_t *idx, int n, int dh, rows_t dst) {
    for (int i = 0; i < n; i++)
        for (int d = 0; d < dh; d += 16) store16(dst, idx[i], d, _mm512_loadu_ps(src + (size_t)i * dh + d));
}

/* A window's rows of q, k and v into local (three n x dh blocks, in that order), and K^T into kt (dh x lp, zero
 * past n; lp = n rounded up to 16). */
static void gather_window(rows_t q, rows_t k, rows_t v, const int64_t *idx, int n, int dh, float *local, float *kt) {
    size_t rows = (size_t)n * dh;
    gather_rows(q, idx, n, dh, local);
    gather_rows(k, idx, n, dh, local + rows);
    gather_rows(v, idx, n, dh, local + 2 * rows);
    transpose_f32(local + rows, dh, n, dh, (n + 15) & ~15, kt);
}

/* row[j] += b[j] for j < n. */
static void add_row(float *row, const float *b, int n) {
    for (int j = 0; j < n; j += 16) {
        __mmask16 in = first_n(n - j);
        __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(in, row + j), _mm512_maskz_loadu_ps(in, b + j));
        _mm512_mask_storeu_ps(row + j, in, sum);
    }
}

/* One (image, window, head): q, k, v, o (and lse, when not NULL: each row's base-2 log-sum-exp of its biased
 * scores, at stride lst) point at the head's token 0; idx lists the window's n tokens. Buffers: local 4 n x dh
 * (ql, kl, vl, ol), kt dh x lp, s MR x lp (lp = n rounded up to 16). */
static void window_one(rows_t q, rows_t k, rows_t v, rows_t o, float *lse, int64_t lst, const int64_t *idx, int n,
                       int dh, float scale, const float *bias, float *local, float *kt, float *s) {
    const float scales[MR] = {scale, scale, scale, scale, scale, scale}, mult = 1.4426950408889634f; /* log2 e */
    int lp = (n + 15) & ~15;
    size_t rows = (size_t)n * dh;
    float *ql = local, *kl = ql + rows, *vl = kl + rows, *ol = vl + rows;
    gather_window(q, k, v, idx, n, dh, local, kt);
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
    scatter_rows(ol, idx, n, dh, o);
}

/* ---- backward ---------------------------------------------------------------------------------------
 * With S = scale Q K^T + bias, P = 2^(S log2 e - lse), dP = dO V^T, D_i = sum_j P_ij dP_ij:
 *   dS = P o (dP - D),  dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO,  dbias = dS.
 * One (image, window, head): rows gathered through idx, P and dS kept whole (n x lp), gradients scattered back
 * to the rows' raster positions; dbias (n x n), when not NULL, accumulates dS. local: 5 n x dh buffers. */
static void window_backward_one(rows_t q, rows_t k, rows_t v, rows_t dout, const float *lse, int64_t lst, rows_t dq,
                                rows_t dk, rows_t dv, const int64_t *idx, int n, int dh, float scale,
                                const float *bias, float *dbias, float *local, float *kt, float *vt, float *pm,
                                float *dsm, float *dp) {
    const float ones[MR] = {1, 1, 1, 1, 1, 1}, scales[MR] = {scale, scale, scale, scale, scale, scale};
    const float mult = 1.4426950408889634f; /* log2 e */
    int lp = (n + 15) & ~15;
    size_t rows = (size_t)n * dh;
    float *ql = local, *kl = ql + rows, *vl = kl + rows, *dol = vl + rows, *g = dol + rows;
    gather_window(q, k, v, idx, n, dh, local, kt);
    gather_rows(dout, idx, n, dh, dol);
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
                _mm512_storeu_ps(ds + j,
                                 _mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_sub_ps(_mm512_loadu_ps(dpr + j), D)));
        }
        rows_product(dsr, lp, 1, n, kl, dh, dh, g + (size_t)i0 * dh, dh, nrows, scales); /* dQ = scale dS K */
    }
    scatter_rows(g, idx, n, dh, dq);
    for (int j0 = 0; j0 < n; j0 += MR) { /* key blocks: dV = P^T dO */
        int nrows = n - j0 < MR ? n - j0 : MR;
        rows_product(pm + j0, 1, lp, n, dol, dh, dh, g + (size_t)j0 * dh, dh, nrows, ones);
    }
    scatter_rows(g, idx, n, dh, dv);
    for (int j0 = 0; j0 < n; j0 += MR) { /* dK = scale dS^T Q */
        int nrows = n - j0 < MR ? n - j0 : MR;
        rows_product(dsm + j0, 1, lp, n, ql, dh, dh, g + (size_t)j0 * dh, dh, nrows, scales);
    }
    scatter_rows(g, idx, n, dh, dk);
    if (dbias)
        for (int i = 0; i < n; i++) add_row(dbias + (int64_t)i * n, dsm + (int64_t)i * lp, n);
}

/* One call of either kernel: the tensors and their (batch, head, token) strides (unit stride along dh), the
 * window order and bias as in the header comment. dout NULL: the forward (out, and lse when not NULL); else the
 * backward from lse (dq, and dk and dv per QUERY head; dbias: NULL or one zeroed block of dbias_size floats per
 * thread, laid out as the bias, which the caller sums). */
struct window_call {
    const void *q, *k, *v, *dout;
    void *out, *dq, *dk, *dv;
    const float *bias;
    float *lse, *dbias;
    const int64_t *qs, *ks, *vs, *os, *ls, *dos, *dqs, *dks, *dvs, *order;
    int64_t bhs, bws, dbias_size, batch, windows;
    int n, heads, kv_heads, dh, bf;
    float scale;
};

/* One (image, window, head) item, it = (b * windows + w) * heads + h; kv head = h / (heads / kv_heads). */
static void window_item(const struct window_call *c, int64_t it, float *mine, float *local, float *kt, float *vt,
                        float *pm, float *dsm, float *dp) {
    int64_t bw = it / c->heads, b = bw / c->windows, w = bw % c->windows;
    int h = (int)(it % c->heads), hk = h / (c->heads / c->kv_heads), n = c->n, dh = c->dh;
    int bf = c->bf;
    rows_t q = head_rows(c->q, c->qs, b, h, bf), k = head_rows(c->k, c->ks, b, hk, bf);
    rows_t v = head_rows(c->v, c->vs, b, hk, bf);
    const float *bias = c->bias ? c->bias + h * c->bhs + w * c->bws : NULL;
    const int64_t *idx = c->order + w * n;
    if (!c->dout) {
        window_one(q, k, v, head_rows(c->out, c->os, b, h, bf), c->lse ? c->lse + at(c->ls, b, h, 0) : NULL,
                   c->lse ? c->ls[2] : 0, idx, n, dh, c->scale, bias, local, kt, dp);
        return;
    }
    window_backward_one(q, k, v, head_rows(c->dout, c->dos, b, h, bf), c->lse + at(c->ls, b, h, 0), c->ls[2],
                        head_rows(c->dq, c->dqs, b, h, bf), head_rows(c->dk, c->dks, b, h, bf),
                        head_rows(c->dv, c->dvs, b, h, bf), idx, n, dh, c->scale, bias,
                        mine ? mine + h * c->bhs + w * c->bws : NULL, local, kt, vt, pm, dsm, dp);
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
int attnlab_attend_windows_f32(const void *q, const void *k, const void *v, void *out, const int64_t *qs,
                               const int64_t *ks, const int64_t *vs, const int64_t *os, const int64_t *order,
                               const float *bias, int64_t bhs, int64_t bws, float *lse, const int64_t *ls,
                               int64_t batch, int64_t windows, int n, int heads, int kv_heads, int dh, int bf,
                               float scale, int nthreads) {
    struct window_call c = {.q = q, .k = k, .v = v, .bias = bias, .out = out, .lse = lse, .qs = qs, .ks = ks,
                            .vs = vs, .os = os, .ls = ls, .order = order, .bhs = bhs, .bws = bws, .batch = batch,
                            .windows = windows, .n = n, .heads = heads, .kv_heads = kv_heads, .dh = dh,
                            .bf = bf, .scale = scale};
    return run_windows(&c, nthreads);
}

/* Gradients of attnlab_attend_windows_f32 from its lse; dout the gradient of its output (see window_call). */
int attnlab_attend_windows_f32_backward(const void *q, const void *k, const void *v, const void *dout,
                                        const float *lse, void *dq, void *dk, void *dv, const int64_t *qs,
                                        const int64_t *ks, const int64_t *vs, const int64_t *dos, const int64_t *ls,
                                        const int64_t *dqs, const int64_t *dks, const int64_t *dvs,
                                        const int64_t *order, const float *bias, int64_t bhs, int64_t bws,
                                        float *dbias, int64_t dbias_size, int64_t batch, int64_t windows, int n,
                                        int heads, int kv_heads, int dh, int bf, float scale, int nthreads) {
    struct window_call c = {.q = q, .k = k, .v = v, .dout = dout, .bias = bias, .lse = (float *)lse, .dq = dq,
                            .dk = dk, .dv = dv, .dbias = dbias, .qs = qs, .ks = ks, .vs = vs, .ls = ls, .dos = dos,
                            .dqs = dqs, .dks = dks, .dvs = dvs, .order = order, .bhs = bhs, .bws = bws,
                            .dbias_size = dbias_size, .batch = batch, .windows = windows, .n = n, .heads = heads,
                            .kv_heads = kv_heads, .dh = dh, .bf = bf, .scale = scale};
    return run_windows(&c, nthreads);
}
