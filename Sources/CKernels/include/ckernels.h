#ifndef RESNETKIT_CKERNELS_H
#define RESNETKIT_CKERNELS_H

#include <stddef.h>
#include <stdint.h>

/// AdamW's update of `count` elements, with PyTorch's single-tensor operations in PyTorch's order:
///   w ← w·decay;  m ← m + (1−β1)(g − m);  v ← v·β2 + (1−β2)·g·g;
///   w ← w − step_size · m / (√v / correction2_sqrt + ε).
/// Compiled for AVX-512, AVX2 and baseline x86-64, chosen when the program loads (see adamw.c).
void resnetkit_adamw(float *restrict value, const float *restrict gradient, float *restrict moment1,
                     float *restrict moment2, size_t count, float decay, float beta2, float one_minus_beta1,
                     float one_minus_beta2, float step_size, float correction2_sqrt, float epsilon);

/// Per-channel Σx and Σx² of the [rows, channels] matrix x, in double, added onto sum and squares row by row.
void resnetkit_channel_moments(const float *restrict x, size_t rows, size_t channels, double *restrict sum,
                               double *restrict squares);

/// BatchNorm's backward sums, added onto sum_dy and sum_dy_xhat (double) row by row: Σ dŷ and Σ dŷ·x̂, with
/// x̂ = (x − mean)·inv_std and dŷ = dy, masked to where mask_output > 0 when mask_output is not NULL.
void resnetkit_batchnorm_gradient_sums(const float *restrict dy, const float *restrict x,
                                       const float *restrict mask_output, const float *restrict mean,
                                       const float *restrict inv_std, size_t rows, size_t channels,
                                       double *restrict sum_dy, double *restrict sum_dy_xhat);

/// BatchNorm's input gradient dx = scale · (dŷ − mean_dy − x̂ · mean_dy_xhat), dŷ and x̂ as above.
void resnetkit_batchnorm_input_gradient(const float *restrict dy, const float *restrict x,
                                        const float *restrict mask_output, const float *restrict mean,
                                        const float *restrict inv_std, const float *restrict scale,
                                        const float *restrict mean_dy, const float *restrict mean_dy_xhat,
                                        size_t rows, size_t channels, float *restrict dx);

/// y = x · scale + shift (+ residual when not NULL), then ReLU (v ≥ 0 ? v : 0) when `relu`.
void resnetkit_batchnorm_apply(const float *restrict x, const float *restrict residual, const float *restrict scale,
                               const float *restrict shift, size_t rows, size_t channels, int relu,
                               float *restrict y);

/// Winograd F(2x2, 3x3)'s input transform for bf16 inference: V_ξ = Bᵀ d B of tiles first_tile ..< first_tile +
/// tile_count of the NHWC bf16 maps `src` ([n, height, width, channels], padding 1, tiles image by image, row by
/// row) into v, bf16 [16, tile_count, channels] (ξ-major, as a batched matmul reads it). `zeros` holds `channels`
/// zeros (the padding), `rows` 16·channels floats of scratch. Sums in fp32, rounded to bf16 once.
void resnetkit_winograd_input_bf16(const uint16_t *restrict src, size_t height, size_t width, size_t channels,
                                   size_t first_tile, size_t tile_count, const uint16_t *restrict zeros,
                                   float *restrict rows, uint16_t *restrict v);

/// Its output transform: Y = Aᵀ M A + bias (+ the residual that `dst` holds when add_residual), ReLU when `relu`,
/// for m fp32 [16, tile_count, channels], into those tiles' pixels of the NHWC bf16 maps `dst`. `rows` holds
/// 8·channels floats of scratch, `spare` `channels` values (pixels of a tile past the map's edge go there).
void resnetkit_winograd_output_bf16(const float *restrict m, size_t height, size_t width, size_t channels,
                                    size_t first_tile, size_t tile_count, const float *restrict bias,
                                    int add_residual, int relu, float *restrict rows, uint16_t *dst,
                                    uint16_t *spare);

/// The same without bias, residual or ReLU, into the NHWC fp32 maps `dst` (`spare`: `channels` floats): a
/// training network's forward, whose BatchNorm follows.
void resnetkit_winograd_output_f32(const float *restrict m, size_t height, size_t width, size_t channels,
                                   size_t first_tile, size_t tile_count, float *restrict rows, float *dst, float *spare);

/// target[k] += source[k] for k < count.
void resnetkit_add_rows_f32(const float *restrict source, size_t count, float *restrict target);

/// dst = bf16(ReLU?(sums + bias (+ the residual that `dst` holds when add_residual))) for [rows, channels] sums
/// and NHWC bf16 dst (the by-taps convolution's epilogue).
void resnetkit_finish_bf16(const float *restrict sums, size_t rows, size_t channels, const float *restrict bias,
                           int add_residual, int relu, uint16_t *dst);

#endif
