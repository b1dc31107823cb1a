/* Transpose of a bf16 matrix, for the weight gradient of bf16 linear layers on CPU.
 *
 * oneDNN computes dW = dY^T X (reduction over tokens) 1.4-1.8x faster when dY^T is given contiguous than
 * from a transposed view (benchmarks/train_step.py shapes), and PyTorch's own transpose-copy of a
 * (2048, 1536) bf16 matrix takes ~10 ms (this kernel: ~1 ms). Here: 16 x 16 blocks transposed in AVX registers (four
 * unpack stages), two blocks per destination cache line, scalar at the edges; ranges of 32-row blocks
 * are split over OpenMP threads.
 */
#include <omp.h>

#include "kernels.h"

/* out[c] = column c of the 16 x 16 block at src (16 bf16 of rows 0..15). After stage k, each register
 * holds 2^k-row groups of consecutive columns; stage 4 joins the 128-bit halves (columns c and c + 8). */
static void block16(const bf16 *src, int64_t ss, __m256i out[16]) {
    __m256i r[16], t[16], u[16], v[16];
    for (int i = 0; i < 16; i++) r[i] = _mm256_loadu_si256((const __m256i *)(src + i * ss));
    for (int p = 0; p < 8; p++) { /* rows (2p, 2p + 1) interleaved: columns 0-3 | 8-11 and 4-7 | 12-15 */
        t[2 * p] = _mm256_unpacklo_epi16(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm256_unpackhi_epi16(r[2 * p], r[2 * p + 1]);
    }
    for (int g = 0; g < 4; g++) { /* rows 4g..4g+3: u[4g + k] holds columns 2k, 2k + 1 | 2k + 8, 2k + 9 */
        u[4 * g + 0] = _mm256_unpacklo_epi32(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm256_unpackhi_epi32(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm256_unpacklo_epi32(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm256_unpackhi_epi32(t[4 * g + 1], t[4 * g + 3]);
    }
    for (int h = 0; h < 2; h++) /* rows 8h..8h+7: v[8h + c] holds column c | c + 8 */
        for (int k = 0; k < 4; k++) {
            v[8 * h + 2 * k] = _mm256_unpacklo_epi64(u[8 * h + k], u[8 * h + 4 + k]);
            v[8 * h + 2 * k + 1] = _mm256_unpackhi_epi64(u[8 * h + k], u[8 * h + 4 + k]);
        }
    for (int c = 0; c < 8; c++) {
        out[c] = _mm256_permute2x128_si256(v[c], v[8 + c], 0x20);
        out[c + 8] = _mm256_permute2x128_si256(v[c], v[8 + c], 0x31);
    }
}

/* 32 rows x 16 columns: each destination row gets one whole 64-byte line, written with a streaming store
 * when aligned (a power-of-two destination stride maps all 16 lines to one L1 set; partial lines would be
 * evicted and re-read between the two halves). */
static void block32(const bf16 *src, int64_t ss, bf16 *dst, int64_t ds) {
    __m256i a[16], b[16];
    block16(src, ss, a);
    block16(src + 16 * ss, ss, b);
    for (int c = 0; c < 16; c++) {
        __m512i line = _mm512_inserti64x4(_mm512_castsi256_si512(a[c]), b[c], 1);
        bf16 *d = dst + c * ds;
        if (((uintptr_t)d & 63) == 0)
            _mm512_stream_si512((void *)d, line);
        else
            _mm512_storeu_si512((void *)d, line);
    }
}

static void edge(const bf16 *src, int64_t ss, bf16 *dst, int64_t ds, int64_t nr, int64_t nc) {
    for (int64_t r = 0; r < nr; r++)
        for (int64_t c = 0; c < nc; c++) dst[c * ds + r] = src[r * ss + c];
}

/* dst (cols, rows), row stride ds, = src (rows, cols)^T with source row stride ss. Each thread takes a
 * range of 32-row blocks and sweeps it once per 16 columns, so its stores run along destination rows
 * (a sweep per row block instead would touch every destination row, one page each, per block). */
int attnlab_transpose_bf16(const bf16 *src, int64_t rows, int64_t cols, int64_t ss, bf16 *dst, int64_t ds,
                           int nthreads) {
    int64_t row_blocks = (rows + 31) / 32;
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        int64_t b0 = row_blocks * t / n, b1 = row_blocks * (t + 1) / n;
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
            for (int64_t rb = b0; rb < b1; rb++) {
                int64_t r0 = rb * 32, nr = rows - r0 < 32 ? rows - r0 : 32;
                if (rb + 2 < b1) /* strided rows, one page each: the hardware prefetchers miss them */
                    for (int i = 0; i < 32; i++)
                        _mm_prefetch((const char *)(src + (r0 + 64 + i) * ss + c0), _MM_HINT_T0);
                if (nr == 32 && nc == 16)
                    block32(src + r0 * ss + c0, ss, dst + c0 * ds + r0, ds);
                else
                    edge(src + r0 * ss + c0, ss, dst + c0 * ds + r0, ds, nr, nc);
            }
        }
        _mm_sfence(); /* streaming stores visible before the caller reads dst */
    }
    return 0;
}
