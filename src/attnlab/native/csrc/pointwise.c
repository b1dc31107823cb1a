/* Row-wise kernels for bf16-autocast training on CPU, each one pass over memory instead of several:
 *
 *  - LayerNorm (Ba et al. 2016) of an fp32 residual stream written straight to bf16, the dtype the next
 *    matmul takes under autocast (PyTorch runs LayerNorm in fp32, writes fp32 and casts in a second pass),
 *    and its backward with a bf16 output gradient, fp32 input gradient and fp32 weight/bias gradients;
 *  - bias + exact (erf) GELU (Hendrycks & Gimpel 2016) on a bf16 matmul output, and its backward fused
 *    with the bias gradient (PyTorch: add, gelu, gelu_backward and a column sum, four passes);
 *  - for fp32 training, the exact GELU with its derivative written in the same pass, and the backward's
 *    multiply by that derivative fused with the bias gradient.
 *
 * All arithmetic is fp32; bf16 results are rounded to nearest even. Rows are contiguous (unit stride);
 * rows are split statically over OpenMP threads, so results are deterministic for a given thread count.
 */
#include <omp.h>

#include "kernels.h"

static inline __m512 load_bf16(const bf16 *p, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline void store_bf16(bf16 *p, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

/* Rows [begin, end) of thread t when `rows` are split evenly over `n` threads. */
static inline void split_rows(int64_t rows, int t, int n, int64_t *begin, int64_t *end) {
    *begin = rows * t / n;
    *end = rows * (t + 1) / n;
}

/* y = (x - mean) * rstd * w + b per row of d; mean and rstd (1 / sqrt(var + eps)) saved per row.
 * x fp32 (rows, d), y bf16 (rows, d); w, b fp32 (d) or NULL (1 and 0).
 * With add (bf16, rows x d) != NULL, the residual add of a pre-norm block comes first: the row is
 * x + add, written to sum_out (fp32, rows x d), and normalised. */
int attnlab_layer_norm_fwd(const float *x, const bf16 *add, float *sum_out, int64_t rows, int d, const float *w,
                           const float *b, float eps, bf16 *y, float *mean, float *rstd, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        int64_t r0, r1;
        split_rows(rows, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
        for (int64_t r = r0; r < r1; r++) {
            const float *xr = x + r * d;
            __m512 acc = _mm512_setzero_ps();
            if (add) { /* the row becomes x + add, in sum_out */
                for (int j = 0; j < d; j += 16) {
                    __mmask16 m = first_n(d - j);
                    __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, xr + j), load_bf16(add + r * d + j, m));
                    _mm512_mask_storeu_ps(sum_out + r * d + j, m, v);
                    acc = _mm512_add_ps(acc, v);
                }
                xr = sum_out + r * d;
            } else {
                for (int j = 0; j < d; j += 16)
                    acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(first_n(d - j), xr + j));
            }
            float mu = _mm512_reduce_add_ps(acc) / d;
            __m512 vmu = _mm512_set1_ps(mu);
            acc = _mm512_setzero_ps();
            for (int j = 0; j < d; j += 16) { /* two-pass variance: no cancellation for large means */
                __mmask16 m = first_n(d - j);
                __m512 c = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, xr + j), vmu);
                acc = _mm512_fmadd_ps(c, c, acc);
            }
            float rs = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / d + eps);
            __m512 vrs = _mm512_set1_ps(rs);
            for (int j = 0; j < d; j += 16) {
                __mmask16 m = first_n(d - j);
                __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + j), vmu), vrs);
                if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + j));
                if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + j));
                store_bf16(y + r * d + j, v, m);
            }
            mean[r] = mu;
            rstd[r] = rs;
        }
    }
    return 0;
}

/* With xhat = (x - mean) * rstd and g = dy * w:
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dw = sum_rows(dy * xhat),  db = sum_rows(dy).
 * dy bf16 (rows, d); dx fp32 (rows, d); dw, db fp32 (d) or NULL. Per-thread partial sums, added in
 * thread order. With the residual add of the forward: x is the saved sum, dres (fp32, rows x d, or NULL
 * for zeros) the gradient reaching the sum from the rest of the residual stream, added into dx, and
 * dadd (bf16, rows x d) receives dx rounded (the gradient of the added branch). Returns -1 when the
 * partial-sum buffers cannot be allocated. */
int attnlab_layer_norm_bwd(const float *x, const bf16 *dy, const float *mean, const float *rstd, const float *w,
                           const float *dres, bf16 *dadd, int64_t rows, int d, float *dx, float *dw, float *db,
                           int nthreads) {
    int dpad = (d + 15) / 16 * 16;
    float *partial = calloc((size_t)nthreads * 2 * dpad, sizeof(float)); /* per thread: dw, db */
    if (!partial) return -1;
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num();
        int64_t r0, r1;
        split_rows(rows, t, omp_get_num_threads(), &r0, &r1);
        float *pw = partial + (size_t)t * 2 * dpad, *pb = pw + dpad;
        for (int64_t r = r0; r < r1; r++) {
            const float *xr = x + r * d;
            const bf16 *gr = dy + r * d;
            __m512 vmu = _mm512_set1_ps(mean[r]), vrs = _mm512_set1_ps(rstd[r]);
            __m512 sg = _mm512_setzero_ps(), sgx = _mm512_setzero_ps();
            for (int j = 0; j < d; j += 16) {
                __mmask16 m = first_n(d - j);
                __m512 xh = _mm512_mul_ps(_mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, xr + j), vmu), vrs);
                __m512 g = load_bf16(gr + j, m);
                _mm512_storeu_ps(pw + j, _mm512_fmadd_ps(g, xh, _mm512_loadu_ps(pw + j)));
                _mm512_storeu_ps(pb + j, _mm512_add_ps(g, _mm512_loadu_ps(pb + j)));
                if (w) g = _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, w + j));
                sg = _mm512_add_ps(sg, g);
                sgx = _mm512_fmadd_ps(g, xh, sgx);
            }
            __m512 mg = _mm512_set1_ps(_mm512_reduce_add_ps(sg) / d);
            __m512 mgx = _mm512_set1_ps(_mm512_reduce_add_ps(sgx) / d);
            for (int j = 0; j < d; j += 16) {
                __mmask16 m = first_n(d - j);
                __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + j), vmu), vrs);
                __m512 g = load_bf16(gr + j, m);
                if (w) g = _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, w + j));
                __m512 v = _mm512_mul_ps(vrs, _mm512_sub_ps(_mm512_sub_ps(g, mg), _mm512_mul_ps(xh, mgx)));
                if (dres) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, dres + r * d + j));
                _mm512_mask_storeu_ps(dx + r * d + j, m, v);
                if (dadd) store_bf16(dadd + r * d + j, v, m);
            }
        }
    }
    for (int j = 0; j < d; j++) {
        float sw = 0.0f, sb = 0.0f;
        for (int t = 0; t < nthreads; t++) {
            sw += partial[(size_t)t * 2 * dpad + j];
            sb += partial[(size_t)t * 2 * dpad + dpad + j];
        }
        if (dw) dw[j] = sw;
        if (db) db[j] = sb;
    }
    free(partial);
    return 0;
}

/* Phi(u) (the standard normal CDF) and, in *pdf, phi(u) = exp(-u^2 / 2) / sqrt(2 pi), from
 * erf(z) = 1 - (a1 t + ... + a5 t^5) exp(-z^2), t = 1 / (1 + p z), z = |u| / sqrt(2) >= 0
 * (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7; bf16 rounds at 3.9e-3). */
static inline __m512 normal_cdf(__m512 u, __m512 *pdf) {
    __m512 z = _mm512_mul_ps(_mm512_abs_ps(u), _mm512_set1_ps(0.70710678f));
    __m512 den = _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
    __m512 t = _mm512_rcp14_ps(den); /* one Newton step: relative error ~2^-28 */
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(den, t, _mm512_set1_ps(2.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    __m512 e = exp2_neg(_mm512_mul_ps(_mm512_mul_ps(z, z), _mm512_set1_ps(-1.44269504f))); /* exp(-z^2) */
    *pdf = _mm512_mul_ps(e, _mm512_set1_ps(0.39894228f));
    __m512 tail = _mm512_mul_ps(_mm512_mul_ps(p, e), _mm512_set1_ps(0.5f)); /* Phi(-|u|) = erfc(z) / 2 */
    __mmask16 neg = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.0f), tail), tail);
}

/* out = gelu(h + bias) = u * Phi(u); h, out bf16 (rows, n); bias fp32 (n) or NULL. With slope != NULL
 * also the derivative gelu'(u) = Phi(u) + u phi(u) in bf16 (rows, n), which the backward multiplies by
 * the output gradient: one multiply per element there instead of the whole erf again. */
int attnlab_bias_gelu_fwd(const bf16 *h, const float *bias, int64_t rows, int n, bf16 *out, bf16 *slope,
                          int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        int64_t r0, r1;
        split_rows(rows, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
        for (int64_t r = r0; r < r1; r++)
            for (int j = 0; j < n; j += 16) {
                __mmask16 m = first_n(n - j);
                __m512 u = load_bf16(h + r * n + j, m), pdf;
                if (bias) u = _mm512_add_ps(u, _mm512_maskz_loadu_ps(m, bias + j));
                __m512 cdf = normal_cdf(u, &pdf);
                store_bf16(out + r * n + j, _mm512_mul_ps(u, cdf), m);
                if (slope) store_bf16(slope + r * n + j, _mm512_fmadd_ps(u, pdf, cdf), m);
            }
    }
    return 0;
}

/* Element (or its 16-lane block) i of a bf16 (half != 0) or fp32 array, as fp32. */
static inline __m512 load_any(const void *p, int64_t i, __mmask16 m, int half) {
    return half ? load_bf16((const bf16 *)p + i, m) : _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

static inline void store_any(void *p, int64_t i, __m512 v, __mmask16 m, int half) {
    if (half)
        store_bf16((bf16 *)p + i, v, m);
    else
        _mm512_mask_storeu_ps((float *)p + i, m, v);
}

/* out = dout * slope over rows x n (all three bf16 when half, else fp32; out may be dout), dbias =
 * sum_rows(out) (fp32, n; NULL: not wanted) from the fp32 products, before any rounding to bf16. -1 when the
 * per-thread partial sums cannot be allocated. */
static int times_slope(const void *slope, const void *dout, void *out, int half, int64_t rows, int n, float *dbias,
                       int nthreads) {
    int npad = (n + 15) / 16 * 16;
    float *partial = calloc((size_t)nthreads * npad, sizeof(float));
    if (!partial) return -1;
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num();
        int64_t r0, r1;
        split_rows(rows, t, omp_get_num_threads(), &r0, &r1);
        float *pb = partial + (size_t)t * npad;
        for (int64_t r = r0; r < r1; r++)
            for (int j = 0; j < n; j += 16) {
                __mmask16 m = first_n(n - j);
                __m512 g = _mm512_mul_ps(load_any(dout, r * n + j, m, half), load_any(slope, r * n + j, m, half));
                if (dbias) _mm512_storeu_ps(pb + j, _mm512_add_ps(g, _mm512_loadu_ps(pb + j)));
                store_any(out, r * n + j, g, m, half);
            }
    }
    if (dbias)
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int t = 0; t < nthreads; t++) s += partial[(size_t)t * npad + j];
            dbias[j] = s;
        }
    free(partial);
    return 0;
}

/* dh = dout * slope (bf16, rows x n; slope from the forward), dbias = sum_rows(dh) (fp32, n; NULL: not
 * wanted), summed from the fp32 products before dh is rounded. -1 when the partial sums cannot be
 * allocated. */
int attnlab_bias_gelu_bwd(const bf16 *slope, const bf16 *dout, int64_t rows, int n, bf16 *dh, float *dbias,
                          int nthreads) {
    return times_slope(slope, dout, dh, 1, rows, n, dbias, nthreads);
}

/* fp32 training GELU: out = gelu(a) = a Phi(a) and slope = gelu'(a) = Phi(a) + a phi(a), both fp32 (count
 * elements; slope may be a itself: each vector is read before it is written). The backward is then one
 * multiply per element (attnlab_gelu_bwd_fp32) instead of PyTorch's gelu_backward, which evaluates erf and
 * exp again. */
int attnlab_gelu_slope_fp32(const float *a, int64_t count, float *out, float *slope, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        int64_t i0, i1;
        split_rows((count + 15) / 16, omp_get_thread_num(), omp_get_num_threads(), &i0, &i1);
        for (int64_t i = i0 * 16; i < i1 * 16 && i < count; i += 16) {
            __mmask16 m = first_n(count - i < 16 ? (int)(count - i) : 16);
            __m512 u = _mm512_maskz_loadu_ps(m, a + i), pdf;
            __m512 cdf = normal_cdf(u, &pdf);
            _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(u, cdf));
            _mm512_mask_storeu_ps(slope + i, m, _mm512_fmadd_ps(u, pdf, cdf));
        }
    }
    return 0;
}

/* g *= slope in place (fp32, rows x n, unit stride) and dbias = sum_rows(g) (fp32, n; NULL: not wanted) from
 * per-thread partial sums. -1 when the partial sums cannot be allocated. */
int attnlab_gelu_bwd_fp32(const float *slope, float *g, int64_t rows, int n, float *dbias, int nthreads) {
    return times_slope(slope, g, g, 0, rows, n, dbias, nthreads);
}
