/* Softmax attention of a few queries per head against a decoding cache: the attention of one generation step.
 *
 * Why: PyTorch's CPU SDPA costs ~40-90 us for one query per head against 64 cached keys at batch 8 (its
 * blocked flash path is sized for long sequences), which made attention a quarter of an encoder-decoder's
 * decoding step. Here each (batch row, head, query) is one work item done whole: scores against every key
 * (fp32 dot products), an additive fp32 mask / bias (-inf = masked, broadcast through zero strides), the
 * fp32 softmax with the fp32 kernels' exp2 polynomial (relative error <= 1.2e-7), and the weighted sum of
 * the values. A row whose keys are all masked gives zeros. Items are split over the OpenMP threads.
 *
 * Layout contract (checked in Python): q, k, v, out have unit stride along the head dimension and are
 * given by (batch, head, token) strides; dh is a multiple of 16 and at most 256; the mask has unit stride
 * along the keys; query head h reads kv head h / (heads / kv_heads).
 */
#include <omp.h>

#include "kernels.h"

#define LOG2E 1.4426950408889634f

static inline __attribute__((always_inline)) __m512 load16(const void *p, const int bf) {
    if (!bf) return _mm512_loadu_ps((const float *)p);
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)); /* bf16 = upper half of fp32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

static inline __attribute__((always_inline)) void store16(void *p, __m512 v, const int bf) {
    if (!bf)
        _mm512_storeu_ps((float *)p, v);
    else
        _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
}

/* One (b, h, t): s (S floats) is scratch. Element size 2 (bf16) or 4 (fp32) via `bf`. */
static inline __attribute__((always_inline)) void one_query(const char *q, const char *k, int64_t kst,
                                                            const char *v, int64_t vst, char *out,
                                                            const float *mask, int S, int dh, float scale,
                                                            float *s, const int bf) {
    const int size = bf ? 2 : 4, nv = dh / 16;
    __m512 qv[16], acc[16];
    for (int j = 0; j < nv; j++) qv[j] = _mm512_mul_ps(load16(q + j * 16 * size, bf), _mm512_set1_ps(scale));
    float mx = -INFINITY;
    for (int i = 0; i < S; i++) {
        const char *kr = k + (int64_t)i * kst * size;
        __m512 d = _mm512_mul_ps(qv[0], load16(kr, bf));
        for (int j = 1; j < nv; j++) d = _mm512_fmadd_ps(qv[j], load16(kr + j * 16 * size, bf), d);
        float x = _mm512_reduce_add_ps(d) + (mask ? mask[i] : 0.0f);
        s[i] = x;
        mx = x > mx ? x : mx;
    }
    for (int j = 0; j < nv; j++) acc[j] = _mm512_setzero_ps();
    if (mx == -INFINITY) { /* every key masked: zeros, as the other kernels give */
        for (int j = 0; j < nv; j++) store16(out + j * 16 * size, acc[j], bf);
        return;
    }
    __m512 sum = _mm512_setzero_ps(), off = _mm512_set1_ps(mx * LOG2E), l2e = _mm512_set1_ps(LOG2E);
    int i = 0;
    for (; i < S; i += 16) { /* p = 2^(x log2 e - max log2 e) = e^(x - max); masked lanes give 2^-125 -> 0 below */
        __mmask16 in = S - i >= 16 ? 0xFFFF : (__mmask16)((1u << (S - i)) - 1u);
        __m512 x = _mm512_maskz_loadu_ps(in, s + i);
        __m512 e = _mm512_maskz_mov_ps(in & _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                                       exp2_poly(_mm512_fmsub_ps(x, l2e, off), 1));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(s + i, in, e);
    }
    for (i = 0; i < S; i++) {
        if (s[i] == 0.0f) continue;
        __m512 p = _mm512_set1_ps(s[i]);
        const char *vr = v + (int64_t)i * vst * size;
        for (int j = 0; j < nv; j++) acc[j] = _mm512_fmadd_ps(p, load16(vr + j * 16 * size, bf), acc[j]);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int j = 0; j < nv; j++) store16(out + j * 16 * size, _mm512_mul_ps(acc[j], inv), bf);
}

static inline __attribute__((always_inline)) int decode(const char *q, const char *k, const char *v, char *out,
                                                        const int64_t *qs, const int64_t *ks, const int64_t *vs,
                                                        const int64_t *os, const float *mask, const int64_t *ms,
                                                        int64_t B, int H, int Hkv, int T, int S, int dh, float scale,
                                                        int nthreads, const int bf) {
    const int size = bf ? 2 : 4, group = H / Hkv;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *s = malloc(sizeof(float) * (size_t)(S > 0 ? S : 1));
        if (!s) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < B * H * T; it++) {
            if (!s) continue;
            int64_t b = it / ((int64_t)H * T);
            int h = (int)((it / T) % H), t = (int)(it % T), hk = h / group;
            one_query(q + at(qs, b, h, t) * size, k + at(ks, b, hk, 0) * size, ks[2], v + at(vs, b, hk, 0) * size,
                      vs[2], out + at(os, b, h, t) * size, mask ? mask + at(ms, b, h, t) : NULL, S, dh, scale, s,
                      bf);
        }
        free(s);
    }
    return failed ? -1 : 0;
}

int attnlab_decode_attention_f32(const float *q, const float *k, const float *v, float *out, const int64_t *qs,
                                 const int64_t *ks, const int64_t *vs, const int64_t *os, const float *mask,
                                 const int64_t *ms, int64_t batch, int heads, int kv_heads, int queries, int keys,
                                 int dh, float scale, int nthreads) {
    return decode((const char *)q, (const char *)k, (const char *)v, (char *)out, qs, ks, vs, os, mask, ms, batch,
                  heads, kv_heads, queries, keys, dh, scale, nthreads, 0);
}

int attnlab_decode_attention_bf16(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *out, const int64_t *qs,
                                  const int64_t *ks, const int64_t *vs, const int64_t *os, const float *mask,
                                  const int64_t *ms, int64_t batch, int heads, int kv_heads, int queries, int keys,
                                  int dh, float scale, int nthreads) {
    return decode((const char *)q, (const char *)k, (const char *)v, (char *)out, qs, ks, vs, os, mask, ms, batch,
                  heads, kv_heads, queries, keys, dh, scale, nthreads, 1);
}
