// BatchNorm's passes over a [rows, channels] activation. Swift's SIMD here runs on SSE (SIMD8<Double> as four
// pairs); compiled per instruction set, the same operations in the same order run 8 doubles or 16 floats at a
// time with AVX-512, and give the same bits.
#include "ckernels.h"
#include "clones.h"

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

// The backward passes take dŷ = dy, or dy where the layer's output is positive when `mask_output` is given (a
// BatchNorm followed by ReLU).
RESNETKIT_CLONES
void resnetkit_batchnorm_gradient_sums(const float *restrict dy, const float *restrict x,
                                       const float *restrict mask_output, const float *restrict mean,
                                       const float *restrict inv_std, size_t rows, size_t channels,
                                       double *restrict sum_dy, double *restrict sum_dy_xhat) {
    for (size_t r = 0; r < rows; r++) {
        const float *g = dy + r * channels, *v = x + r * channels;
        const float *out = mask_output ? mask_output + r * channels : 0;
        if (out) {
            for (size_t j = 0; j < channels; j++) {
                float gj = out[j] > 0 ? g[j] : 0.0f;
                sum_dy[j] += (double)gj;
                sum_dy_xhat[j] += (double)(gj * ((v[j] - mean[j]) * inv_std[j]));
            }
        } else {
            for (size_t j = 0; j < channels; j++) {
                float gj = g[j];
                sum_dy[j] += (double)gj;
                sum_dy_xhat[j] += (double)(gj * ((v[j] - mean[j]) * inv_std[j]));
            }
        }
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
        const float *out = mask_output ? mask_output + r * channels : 0;
        float *d = dx + r * channels;
        if (out) {
            for (size_t j = 0; j < channels; j++) {
                float gj = out[j] > 0 ? g[j] : 0.0f;
                float xhat = (v[j] - mean[j]) * inv_std[j];
                d[j] = scale[j] * (gj - mean_dy[j] - xhat * mean_dy_xhat[j]);
            }
        } else {
            for (size_t j = 0; j < channels; j++) {
                float xhat = (v[j] - mean[j]) * inv_std[j];
                d[j] = scale[j] * (g[j] - mean_dy[j] - xhat * mean_dy_xhat[j]);
            }
        }
    }
}

RESNETKIT_CLONES
void resnetkit_batchnorm_apply(const float *restrict x, const float *restrict residual, const float *restrict scale,
                               const float *restrict shift, size_t rows, size_t channels, int relu,
                               float *restrict y) {
    for (size_t r = 0; r < rows; r++) {
        const float *src = x + r * channels;
        float *dst = y + r * channels;
        if (residual) {
            const float *add = residual + r * channels;
            for (size_t j = 0; j < channels; j++) {
                float v = src[j] * scale[j] + shift[j] + add[j];
                dst[j] = relu ? (v >= 0 ? v : 0.0f) : v;
            }
        } else {
            for (size_t j = 0; j < channels; j++) {
                float v = src[j] * scale[j] + shift[j];
                dst[j] = relu ? (v >= 0 ? v : 0.0f) : v;
            }
        }
    }
}
