#ifndef RESNETKIT_CKERNELS_H
#define RESNETKIT_CKERNELS_H

#include <stddef.h>

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

#endif
