/* A streamed step's attention in a bf16 CPU step: each row's 16 new queries against its window's
 * cached keys and values, per head, in one pass: scores, softmax and the weighted values, with
 * AVX512-BF16 dot products (two bf16 products per float32 lane and instruction), float32 sums.
 *
 * Compiled once per machine by wm_sim/compiled_kernels.py and called through ctypes; torch's two
 * batched matmuls and softmax (wm_sim.world_model.attend_batched) stay the reference. On a CPU
 * without AVX512-BF16 it builds with attention_supported() = 0 and torch's path runs.
 *
 * Layouts (elements are bf16):
 *   q     query i of row b, head h at q + b*qb + h*qh + i*qi, its D values contiguous;
 *   k, v  (B, H, Sk, D) contiguous, the window's slots in the cache's ring order;
 *   mask  (B, Sk) bytes, 0 = an empty slot no query may read, or NULL when every slot is filled;
 *   out   (B, Sq, H, D) contiguous: what the output projection reads, with no transpose.
 */
#include <stdint.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>

enum { Q = 16, D = 32, MAX_K = 512 };

int attention_supported(void) { return 1; }

/* e^x for x <= 0 (scores minus their maximum): 2^(x log2 e) as 2^n times a degree-6 polynomial of
 * the rest, within a few float32 ulps of expf */
static inline __m512 exp_ps(__m512 x) {
    __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Scores of one head: s[j][i] = scale * q_i . k_j (the 16 queries in the lanes), empty slots at
 * -1e30; returns their maximum per query. */
static inline __m512 head_scores(const uint32_t qt[D / 2][Q], const uint16_t *kh, const uint8_t *m,
                                 long sk, float scale, float s[][Q]) {
    __m512bh qv[D / 2];
    for (int p = 0; p < D / 2; p++) qv[p] = (__m512bh)_mm512_load_si512(qt[p]);
    __m512 top = _mm512_set1_ps(-1e30f), sc = _mm512_set1_ps(scale);
    for (long j = 0; j < sk; j += 4) { /* four keys at once: four independent sums */
        __m512 r[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const uint32_t *pairs = (const uint32_t *)(kh + j * D); /* each key's values in pairs */
        for (int p = 0; p < D / 2; p++)
            for (int t = 0; t < 4; t++)
                r[t] = _mm512_dpbf16_ps(r[t], qv[p], (__m512bh)_mm512_set1_epi32((int)pairs[t * D / 2 + p]));
        for (int t = 0; t < 4; t++) {
            __m512 x = (m && !m[j + t]) ? _mm512_set1_ps(-1e30f) : _mm512_mul_ps(r[t], sc);
            top = _mm512_max_ps(top, x);
            _mm512_store_ps(s[j + t], x);
        }
    }
    return top;
}

/* The softmax of s over the slots, rounded to bf16 and stored as pairs of slots per query:
 * p2[j/2][i] = (p[j][i], p[j+1][i]), what the value sums read two at a time. */
static inline void head_softmax(float s[][Q], __m512 top, long sk, __m512i interleave, uint32_t p2[][Q]) {
    __m512 total = _mm512_setzero_ps();
    for (long j = 0; j < sk; j++) {
        __m512 p = exp_ps(_mm512_sub_ps(_mm512_load_ps(s[j]), top));
        _mm512_store_ps(s[j], p);
        total = _mm512_add_ps(total, p);
    }
    __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), total);
    for (long j = 0; j < sk; j += 2) {
        __m512bh both = _mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_load_ps(s[j + 1]), inv),
                                            _mm512_mul_ps(_mm512_load_ps(s[j]), inv));
        _mm512_store_si512(p2[j / 2], _mm512_permutexvar_epi16(interleave, (__m512i)both));
    }
}

/* out_i = sum_j p[j][i] v_j for the head's queries, eight at a time (16 float32 sums in registers). */
static inline void head_values(const uint32_t p2[][Q], const uint16_t *vh, long sk, long sq,
                               __m512i pair_lo, __m512i pair_hi, uint16_t *out, long row_stride) {
    for (long i0 = 0; i0 < sq; i0 += 8) {
        __m512 lo[8], hi[8];
        for (int i = 0; i < 8; i++) lo[i] = hi[i] = _mm512_setzero_ps();
        for (long j = 0; j < sk; j += 2) { /* slots j and j+1, their values interleaved */
            __m512i r0 = _mm512_loadu_si512(vh + j * D), r1 = _mm512_loadu_si512(vh + (j + 1) * D);
            __m512bh v_lo = (__m512bh)_mm512_permutex2var_epi16(r0, pair_lo, r1);
            __m512bh v_hi = (__m512bh)_mm512_permutex2var_epi16(r0, pair_hi, r1);
            for (int i = 0; i < 8; i++) {
                __m512bh w = (__m512bh)_mm512_set1_epi32((int)p2[j / 2][i0 + i]);
                lo[i] = _mm512_dpbf16_ps(lo[i], v_lo, w);
                hi[i] = _mm512_dpbf16_ps(hi[i], v_hi, w);
            }
        }
        for (int i = 0; i < 8 && i0 + i < sq; i++)
            _mm512_storeu_si512((void *)(out + (i0 + i) * row_stride), (__m512i)_mm512_cvtne2ps_pbh(hi[i], lo[i]));
    }
}

/* Row b's head h (bh = b * heads + h): its queries' outputs. */
static void attend_head(const uint16_t *q, long qb, long qh, long qi, const uint16_t *k, const uint16_t *v,
                        const uint8_t *mask, uint16_t *out, long bh, long heads, long sq, long sk, float scale,
                        __m512i pair_lo, __m512i pair_hi, __m512i interleave) {
    long b = bh / heads, h = bh % heads;
    uint32_t qt[D / 2][Q] __attribute__((aligned(64))); /* the queries' value pairs, query in the lane */
    float s[MAX_K][Q] __attribute__((aligned(64)));
    uint32_t p2[MAX_K / 2][Q] __attribute__((aligned(64)));
    for (long i = 0; i < Q; i++) {
        const uint32_t *row = (const uint32_t *)(q + b * qb + h * qh + (i < sq ? i : 0) * qi);
        for (int p = 0; p < D / 2; p++) qt[p][i] = i < sq ? row[p] : 0;
    }
    __m512 top = head_scores(qt, k + bh * sk * D, mask ? mask + b * sk : 0, sk, scale, s);
    head_softmax(s, top, sk, interleave, p2);
    head_values(p2, v + bh * sk * D, sk, sq, pair_lo, pair_hi, out + (b * sq * heads + h) * D, heads * D);
}

/* Returns 0, or -1 for shapes it does not take (then torch's path runs): up to 16 queries, heads
 * of 32, up to 512 slots, in fours. */
int attention_bf16(const uint16_t *q, long qb, long qh, long qi, const uint16_t *k, const uint16_t *v,
                   const uint8_t *mask, uint16_t *out, long batch, long heads, long sq, long sk, long d,
                   float scale, int threads) {
    if (sq < 1 || sq > Q || sk < 4 || sk > MAX_K || sk % 4 || d != D) return -1;
    uint16_t lo[32], hi[32], pp[32];
    for (int l = 0; l < 16; l++) {
        lo[2 * l] = l, lo[2 * l + 1] = 32 + l;      /* slot j's value e, slot j+1's, e = 0..15 */
        hi[2 * l] = 16 + l, hi[2 * l + 1] = 48 + l; /* e = 16..31 */
        pp[2 * l] = l, pp[2 * l + 1] = 16 + l;      /* query i's p[j], p[j+1] */
    }
    const __m512i pair_lo = _mm512_loadu_si512(lo), pair_hi = _mm512_loadu_si512(hi);
    const __m512i interleave = _mm512_loadu_si512(pp);
    if (threads <= 1) { /* no OpenMP at all, as in a forked child, whose copy of the pool has no threads */
        for (long bh = 0; bh < batch * heads; bh++)
            attend_head(q, qb, qh, qi, k, v, mask, out, bh, heads, sq, sk, scale, pair_lo, pair_hi, interleave);
        return 0;
    }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long bh = 0; bh < batch * heads; bh++)
        attend_head(q, qb, qh, qi, k, v, mask, out, bh, heads, sq, sk, scale, pair_lo, pair_hi, interleave);
    return 0;
}

#else /* no AVX512-BF16 on this CPU */

int attention_supported(void) { return 0; }

int attention_bf16(const uint16_t *q, long qb, long qh, long qi, const uint16_t *k, const uint16_t *v,
                   const uint8_t *mask, uint16_t *out, long batch, long heads, long sq, long sk, long d,
                   float scale, int threads) {
    (void)q, (void)qb, (void)qh, (void)qi, (void)k, (void)v, (void)mask, (void)out, (void)batch;
    (void)heads, (void)sq, (void)sk, (void)d, (void)scale, (void)threads;
    return -1;
}
#endif
