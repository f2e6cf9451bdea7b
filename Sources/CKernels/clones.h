// Shared by the kernels: no contraction into fused multiply-adds (so every instruction set rounds as PyTorch's
// separate operations do), and RESNETKIT_CLONES, which compiles a function once per instruction set and lets
// the loader pick the best the CPU has (GNU ifunc; elsewhere one baseline version).
#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__) && defined(__linux__)
#define RESNETKIT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RESNETKIT_CLONES
#endif
