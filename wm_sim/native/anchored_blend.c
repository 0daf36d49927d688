/* The anchored decoder's last pass in a bf16 inference step, as one loop over memory:
 * depth-to-space of the last convolution's logits, their sigmoid, the blend with the anchor,
 * and the frame's 0..255 levels, as uint8 and as bf16 (what the encoder reads again).
 *
 * Compiled once per machine by wm_sim/compiled_kernels.py and called through ctypes; the
 * torch ops it replaces (wm_sim.tokenizer.Decoder and WorldModel.decode_and_reencode) stay the
 * reference, and the tests hold the two to one level apart at most.
 *
 * Layouts, row r = (b, h) of the logits' H x W grid:
 *   logits  (B, H, W, 2, 2, 4) bf16: channels-last memory of reordered_conv's (B, 16, H, W),
 *           (i, j, c) = (row, column, channel) of output pixel (2h + i, 2w + j), c = R, G, B, blend;
 *   anchor  (B, 2H, 2W, 3) float32 in [0, 1];
 *   pixels  (B, 2H, 2W, 3) uint8, levels (B, 2H, 2W, 3) bf16 (may be NULL).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static inline float widen_bf16(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* sigmoid(x) with exp's argument kept finite: -ffast-math's reciprocal turns 1 / inf into NaN,
 * and beyond |x| = 88 the sigmoid is 0 or 1 in float32 anyway */
static inline float sigmoid(float x) {
    x = x < -88.0f ? -88.0f : (x > 88.0f ? 88.0f : x);
    return 1.0f / (1.0f + expf(-x));
}

static inline uint16_t narrow_exact_bf16(float f) { /* f is an integer 0..255: exact in bf16 */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return (uint16_t)(bits >> 16);
}

enum { MAX_WIDTH = 256 };

/* Logit row r (b, h): its two output rows. `colour` and `weight` map each output value of a row
 * pair to its logits in the row. */
static void blend_row(const uint16_t *logits, const float *anchor, uint8_t *pixels, uint16_t *levels,
                      long r, long width, const int *colour, const int *weight) {
    const long n_in = width * 16, n_out = width * 12; /* per logit row: 2 output rows of 2W pixels */
    float sig[MAX_WIDTH * 16];
    const uint16_t *in = logits + r * n_in;
    for (long k = 0; k < n_in; k++) sig[k] = sigmoid(widen_bf16(in[k]));
    const float *a = anchor + r * n_out;
    uint8_t *out = pixels + r * n_out;
    for (long k = 0; k < n_out; k++) {
        /* torch.lerp(a, p, g): exact at both ends, as torch computes it */
        float p = sig[colour[k]], g = sig[weight[k]], d = p - a[k];
        float v = g < 0.5f ? a[k] + g * d : p - d * (1.0f - g);
        out[k] = (uint8_t)(int)(v * 255.0f + 0.5f); /* v in [0, 1]: 0.5 .. 255.5 truncates to 0..255 */
    }
    if (levels) {
        uint16_t *lv = levels + r * n_out;
        for (long k = 0; k < n_out; k++) lv[k] = narrow_exact_bf16((float)out[k]);
    }
}

/* The logits' B * H rows on `threads` OpenMP threads (one: no OpenMP at all, as in a forked
 * child, whose copy of the thread pool has no threads); returns 0, or -1 if width is out of range. */
int anchored_blend_bf16(const uint16_t *logits, const float *anchor, uint8_t *pixels,
                        uint16_t *levels, long rows, long width, int threads) {
    if (width < 1 || width > MAX_WIDTH) return -1;
    int colour[MAX_WIDTH * 12], weight[MAX_WIDTH * 12];
    for (long k = 0; k < width * 12; k++) { /* output value k of a row pair -> its logits in the row */
        long i = k / (width * 6), x = (k / 3) % (2 * width), c = k % 3;
        long pixel = (x / 2) * 16 + i * 8 + (x % 2) * 4;
        colour[k] = (int)(pixel + c);
        weight[k] = (int)(pixel + 3);
    }
    if (threads <= 1) {
        for (long r = 0; r < rows; r++) blend_row(logits, anchor, pixels, levels, r, width, colour, weight);
        return 0;
    }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) blend_row(logits, anchor, pixels, levels, r, width, colour, weight);
    return 0;
}
