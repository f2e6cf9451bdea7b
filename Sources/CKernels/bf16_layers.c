// The loops around oneDNN's matmuls in bf16 inference's own layers, bf16 NHWC activations in and out, fp32 inside:
// Winograd F(2x2, 3x3)'s input and output transforms (WinogradBF16) and the by-taps layers' sums and epilogue
// (TapwiseBF16). Compiled per instruction set; each transform is split into loops over the channels that read two
// or three rows and write one, which vectorise (16 floats at a time with AVX-512) where one loop over all 16 rows
// of a tile did not.
#include <stdint.h>
#include <string.h>
#include "ckernels.h"
#include "clones.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even, as oneDNN's conversions do (activations are finite: no NaN to keep).
INLINE uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

// Tile t of a batch of h x w maps (tiles numbered image by image, row by row): its image and top-left pixel.
INLINE void tile_origin(size_t t, size_t h, size_t w, size_t *n, size_t *y, size_t *x) {
    size_t tiles_wide = (w + 1) / 2, tiles_high = (h + 1) / 2;
    *x = 2 * (t % tiles_wide);
    *y = 2 * ((t / tiles_wide) % tiles_high);
    *n = t / (tiles_wide * tiles_high);
}

// o = a·sa + b·sb for bf16 rows a and b (sa, sb = ±1).
INLINE void combine_bf16(const uint16_t *restrict a, const uint16_t *restrict b, float sa, float sb,
                         float *restrict o, size_t count) {
    for (size_t c = 0; c < count; c++) o[c] = sa * from_bf16(a[c]) + sb * from_bf16(b[c]);
}

// o = bf16(a·sa + b·sb).
INLINE void combine_to_bf16(const float *restrict a, const float *restrict b, float sa, float sb,
                            uint16_t *restrict o, size_t count) {
    for (size_t c = 0; c < count; c++) o[c] = to_bf16(sa * a[c] + sb * b[c]);
}

RESNETKIT_CLONES
void resnetkit_winograd_input_bf16(const uint16_t *restrict src, size_t height, size_t width, size_t channels,
                                   size_t first_tile, size_t tile_count, const uint16_t *restrict zeros,
                                   float *restrict rows, uint16_t *restrict v) {
    size_t plane = tile_count * channels;  // V_ξ is [tile_count, channels], ξ-major
    for (size_t t = 0; t < tile_count; t++) {
        size_t n, y0, x0;
        tile_origin(first_tile + t, height, width, &n, &y0, &x0);
        // The 4x4 patch around the 2x2 tile (one pixel of padding on each side): zeros outside the map.
        const uint16_t *d[16];
        for (size_t i = 0; i < 4; i++) {
            for (size_t j = 0; j < 4; j++) {
                long y = (long)y0 - 1 + (long)i, x = (long)x0 - 1 + (long)j;
                d[i * 4 + j] = y >= 0 && y < (long)height && x >= 0 && x < (long)width
                    ? src + ((n * height + (size_t)y) * width + (size_t)x) * channels : zeros;
            }
        }
        // Bᵀ d, column by column (Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]), into rows[4i + j] ...
        for (size_t j = 0; j < 4; j++) {
            combine_bf16(d[j], d[8 + j], 1, -1, rows + (0 + j) * channels, channels);
            combine_bf16(d[4 + j], d[8 + j], 1, 1, rows + (4 + j) * channels, channels);
            combine_bf16(d[8 + j], d[4 + j], 1, -1, rows + (8 + j) * channels, channels);
            combine_bf16(d[4 + j], d[12 + j], 1, -1, rows + (12 + j) * channels, channels);
        }
        // ... then each row of it times B, into V_ξ for ξ = 4i + j.
        uint16_t *out = v + t * channels;
        for (size_t i = 0; i < 4; i++) {
            const float *r = rows + 4 * i * channels;
            combine_to_bf16(r, r + 2 * channels, 1, -1, out + (4 * i + 0) * plane, channels);
            combine_to_bf16(r + channels, r + 2 * channels, 1, 1, out + (4 * i + 1) * plane, channels);
            combine_to_bf16(r + 2 * channels, r + channels, 1, -1, out + (4 * i + 2) * plane, channels);
            combine_to_bf16(r + channels, r + 3 * channels, 1, -1, out + (4 * i + 3) * plane, channels);
        }
    }
}

// o = a + sb·b + sc·c (sb, sc = ±1).
INLINE void sum3(const float *restrict a, const float *restrict b, const float *restrict c, float sb, float sc,
                 float *restrict o, size_t count) {
    for (size_t k = 0; k < count; k++) o[k] = a[k] + sb * b[k] + sc * c[k];
}

// q[k] = bf16(ReLU?(value (+ the residual q[k] holds))) for k < count, `value` an expression in k: written as four
// loops so that each vectorises without a branch (shared by Winograd's output and the by-taps layers' epilogue).
#define EPILOGUE(count, value, add_residual, relu, q)                                          \
    do {                                                                                       \
        if (add_residual) {                                                                    \
            if (relu) {                                                                        \
                for (size_t k = 0; k < (count); k++) {                                         \
                    float y = (value) + from_bf16((q)[k]);                                     \
                    (q)[k] = to_bf16(y > 0 ? y : 0);                                           \
                }                                                                              \
            } else {                                                                           \
                for (size_t k = 0; k < (count); k++) (q)[k] = to_bf16((value) + from_bf16((q)[k])); \
            }                                                                                  \
        } else if (relu) {                                                                     \
            for (size_t k = 0; k < (count); k++) {                                             \
                float y = (value);                                                             \
                (q)[k] = to_bf16(y > 0 ? y : 0);                                               \
            }                                                                                  \
        } else {                                                                               \
            for (size_t k = 0; k < (count); k++) (q)[k] = to_bf16(value);                      \
        }                                                                                      \
    } while (0)

// One output pixel: bf16(ReLU?(a + sb·b + sc·c + bias (+ the residual already in q))).
INLINE void finish(const float *restrict a, const float *restrict b, const float *restrict c, float sb, float sc,
                   const float *restrict bias, int add_residual, int relu, uint16_t *restrict q, size_t count) {
    EPILOGUE(count, a[k] + sb * b[k] + sc * c[k] + bias[k], add_residual, relu, q);
}

// Aᵀ M for tile t of m [16, tile_count, channels] (`plane` = tile_count·channels), column by column
// (Aᵀ = [1 1 1 0; 0 1 −1 −1]), into rows[4i + j] for i = 0, 1; and the tile's four output pixels in the NHWC maps
// `dst` (`size` bytes a value), those past the map's edge pointing to `spare`.
INLINE void output_rows(const float *restrict m, size_t plane, size_t t, size_t height, size_t width, size_t channels,
                        size_t first_tile, float *restrict rows, char *dst, char *spare, size_t size, char *q[4]) {
    size_t n, y0, x0;
    tile_origin(first_tile + t, height, width, &n, &y0, &x0);
    const float *s = m + t * channels;
    for (size_t j = 0; j < 4; j++) {
        sum3(s + j * plane, s + (4 + j) * plane, s + (8 + j) * plane, 1, 1, rows + j * channels, channels);
        sum3(s + (4 + j) * plane, s + (8 + j) * plane, s + (12 + j) * plane, -1, -1, rows + (4 + j) * channels, channels);
    }
    char *q00 = dst + ((n * height + y0) * width + x0) * channels * size;
    q[0] = q00;
    q[1] = x0 + 1 < width ? q00 + channels * size : spare;
    q[2] = y0 + 1 < height ? q00 + width * channels * size : spare;
    q[3] = x0 + 1 < width && y0 + 1 < height ? q00 + (width + 1) * channels * size : spare;
}

RESNETKIT_CLONES
void resnetkit_winograd_output_bf16(const float *restrict m, size_t height, size_t width, size_t channels,
                                    size_t first_tile, size_t tile_count, const float *restrict bias,
                                    int add_residual, int relu, float *restrict rows, uint16_t *dst,
                                    uint16_t *spare) {
    size_t plane = tile_count * channels;  // M_ξ is [tile_count, channels], ξ-major
    for (size_t t = 0; t < tile_count; t++) {
        char *q[4];
        output_rows(m, plane, t, height, width, channels, first_tile, rows, (char *)dst, (char *)spare, 2, q);
        // ... then each row times A: the tile's 2x2 pixels.
        for (size_t i = 0; i < 2; i++) {
            const float *r = rows + 4 * i * channels;
            finish(r, r + channels, r + 2 * channels, 1, 1, bias, add_residual, relu, (uint16_t *)q[2 * i], channels);
            finish(r + channels, r + 2 * channels, r + 3 * channels, -1, -1, bias, add_residual, relu,
                   (uint16_t *)q[2 * i + 1], channels);
        }
    }
}

RESNETKIT_CLONES
void resnetkit_winograd_output_f32(const float *restrict m, size_t height, size_t width, size_t channels,
                                   size_t first_tile, size_t tile_count, float *restrict rows, float *dst, float *spare) {
    size_t plane = tile_count * channels;
    for (size_t t = 0; t < tile_count; t++) {
        char *q[4];
        output_rows(m, plane, t, height, width, channels, first_tile, rows, (char *)dst, (char *)spare, 4, q);
        for (size_t i = 0; i < 2; i++) {
            const float *r = rows + 4 * i * channels;
            sum3(r, r + channels, r + 2 * channels, 1, 1, (float *)q[2 * i], channels);
            sum3(r + channels, r + 2 * channels, r + 3 * channels, -1, -1, (float *)q[2 * i + 1], channels);
        }
    }
}

RESNETKIT_CLONES
void resnetkit_add_rows_f32(const float *restrict source, size_t count, float *restrict target) {
    for (size_t k = 0; k < count; k++) target[k] += source[k];
}

RESNETKIT_CLONES
void resnetkit_finish_bf16(const float *restrict sums, size_t rows, size_t channels, const float *restrict bias,
                           int add_residual, int relu, uint16_t *dst) {
    for (size_t r = 0; r < rows; r++) {
        const float *s = sums + r * channels;
        uint16_t *q = dst + r * channels;
        EPILOGUE(channels, s[k] + bias[k], add_residual, relu, q);
    }
}
