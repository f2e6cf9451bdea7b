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

#endif
