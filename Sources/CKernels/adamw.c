// Elementwise kernels that Swift, compiled for baseline x86-64, cannot vectorise past SSE. AdamW is bound by its
// square roots and divisions, which wider vectors speed up in proportion. Each function is compiled once per instruction set (`target_clones`), and the
// loader picks the best the CPU has. Results are bit-identical across the clones: square root and division are
// correctly rounded in every instruction set, and contraction into fused multiply-adds is off.
#include "ckernels.h"
#include "clones.h"

RESNETKIT_CLONES
void resnetkit_adamw(float *restrict value, const float *restrict gradient, float *restrict moment1,
                     float *restrict moment2, size_t count, float decay, float beta2, float one_minus_beta1,
                     float one_minus_beta2, float step_size, float correction2_sqrt, float epsilon) {
    for (size_t i = 0; i < count; i++) {
        float g = gradient[i];
        float w = value[i] * decay;
        // lerp(m, g, 1 − β1) as torch's lerp_ computes it for weights below 0.5.
        float m = moment1[i] + one_minus_beta1 * (g - moment1[i]);
        float v = moment2[i] * beta2 + one_minus_beta2 * g * g;
        // __builtin_elementwise_sqrt: sqrt without errno, so that the loop vectorises.
        float denom = __builtin_elementwise_sqrt(v) / correction2_sqrt + epsilon;
        moment1[i] = m;
        moment2[i] = v;
        value[i] = w - step_size * (m / denom);
    }
}
