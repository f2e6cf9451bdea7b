// BatchNorm's passes over a [rows, channels] activation. Swift's SIMD here runs on SSE (SIMD8<Double> as four
// pairs); compiled per instruction set, the same operations in the same order run 8 doubles or 16 floats at a
// time with AVX-512, and give the same bits.
//
// Each pass has one row loop, inlined twice: once with its optional operand (ReLU mask, residual) and once with
// NULL, so that the test on it folds away and the channel loop vectorises without a branch.
#include "ckernels.h"
#include "clones.h"

#define ROW_PASS static inline __attribute__((always_inline)) void

RESNETKIT_CLONES
void resnetkit_channel_moments(const float *restrict x, size_t rows, size_t channels, double *restrict sum,
                               double *restrict squares) {
    for (size_t r = 0; r < rows; r++) {
        const float *row = x + r * channels;
        for (size_t j = 0; j < channels; j++) {
            double v = row[j];
            sum[j] += v;
            squares[j] += v * v;
        }
    }
}

// dŷ: dy, or dy where the layer's output is positive when `out` (a BatchNorm followed by ReLU) is given.
static inline __attribute__((always_inline)) float masked(const float *g, const float *out, size_t j) {
    return out ? (out[j] > 0 ? g[j] : 0.0f) : g[j];
}

ROW_PASS gradient_sums_row(const float *g, const float *v, const float *out, const float *mean,
                           const float *inv_std, size_t channels, double *restrict sum_dy,
                           double *restrict sum_dy_xhat) {
    for (size_t j = 0; j < channels; j++) {
        float gj = masked(g, out, j);
        sum_dy[j] += (double)gj;
        sum_dy_xhat[j] += (double)(gj * ((v[j] - mean[j]) * inv_std[j]));
    }
}

RESNETKIT_CLONES
void resnetkit_batchnorm_gradient_sums(const float *restrict dy, const float *restrict x,
                                       const float *restrict mask_output, const float *restrict mean,
                                       const float *restrict inv_std, size_t rows, size_t channels,
                                       double *restrict sum_dy, double *restrict sum_dy_xhat) {
    for (size_t r = 0; r < rows; r++) {
        const float *g = dy + r * channels, *v = x + r * channels;
        if (mask_output)
            gradient_sums_row(g, v, mask_output + r * channels, mean, inv_std, channels, sum_dy, sum_dy_xhat);
        else
            gradient_sums_row(g, v, 0, mean, inv_std, channels, sum_dy, sum_dy_xhat);
    }
}

ROW_PASS input_gradient_row(const float *g, const float *v, const float *out, const float *mean,
                            const float *inv_std, const float *scale, const float *mean_dy,
                            const float *mean_dy_xhat, size_t channels, float *restrict d) {
    for (size_t j = 0; j < channels; j++) {
        float xhat = (v[j] - mean[j]) * inv_std[j];
        d[j] = scale[j] * (masked(g, out, j) - mean_dy[j] - xhat * mean_dy_xhat[j]);
    }
}

RESNETKIT_CLONES
void resnetkit_batchnorm_input_gradient(const float *restrict dy, const float *restrict x,
                                        const float *restrict mask_output, const float *restrict mean,
                                        const float *restrict inv_std, const float *restrict scale,
                                        const float *restrict mean_dy, const float *restrict mean_dy_xhat,
                                        size_t rows, size_t channels, float *restrict dx) {
    for (size_t r = 0; r < rows; r++) {
        const float *g = dy + r * channels, *v = x + r * channels;
        float *d = dx + r * channels;
        if (mask_output)
            input_gradient_row(g, v, mask_output + r * channels, mean, inv_std, scale, mean_dy, mean_dy_xhat, channels, d);
        else
            input_gradient_row(g, v, 0, mean, inv_std, scale, mean_dy, mean_dy_xhat, channels, d);
    }
}

ROW_PASS apply_row(const float *src, const float *add, const float *scale, const float *shift, size_t channels,
                   int relu, float *restrict dst) {
    for (size_t j = 0; j < channels; j++) {
        float v = src[j] * scale[j] + shift[j];
        if (add) v = v + add[j];
        dst[j] = relu ? (v >= 0 ? v : 0.0f) : v;
    }
}

RESNETKIT_CLONES
void resnetkit_batchnorm_apply(const float *restrict x, const float *restrict residual, const float *restrict scale,
                               const float *restrict shift, size_t rows, size_t channels, int relu,
                               float *restrict y) {
    for (size_t r = 0; r < rows; r++) {
        if (residual)
            apply_row(x + r * channels, residual + r * channels, scale, shift, channels, relu, y + r * channels);
        else
            apply_row(x + r * channels, 0, scale, shift, channels, relu, y + r * channels);
    }
}
