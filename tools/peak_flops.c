// Peak arithmetic of one core, measured: fp32 FMAs (AVX-512, else AVX2) and, where the CPU has AVX512_BF16, bf16
// dot products (vdpbf16ps, what oneDNN's bf16 convolutions run on CPUs without AMX). Twelve independent
// accumulators hide the latencies. Used by tools/training_roofline.sh; AMX's tile multiplies are not measured.
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { chains = 12 };
static const long rounds = 100000000;

__attribute__((target("avx512f"))) static double fp32_avx512(void) {
    __m512 acc[chains];
    for (int i = 0; i < chains; i++) acc[i] = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1.0f), y = _mm512_set1_ps(1e-9f);
    double start = seconds();
    for (long r = 0; r < rounds; r++) {
        for (int k = 0; k < chains; k++) acc[k] = _mm512_fmadd_ps(x, y, acc[k]);
        __asm__ volatile("" : "+v"(x));
    }
    double elapsed = seconds() - start;
    float sink = 0;
    for (int i = 0; i < chains; i++) sink += _mm512_reduce_add_ps(acc[i]);
    __asm__ volatile("" : : "x"(sink));
    return rounds * chains * 16.0 * 2 / elapsed / 1e9;
}

__attribute__((target("avx2,fma"))) static double fp32_avx2(void) {
    __m256 acc[chains];
    for (int i = 0; i < chains; i++) acc[i] = _mm256_setzero_ps();
    __m256 x = _mm256_set1_ps(1.0f), y = _mm256_set1_ps(1e-9f);
    double start = seconds();
    for (long r = 0; r < rounds; r++) {
        for (int k = 0; k < chains; k++) acc[k] = _mm256_fmadd_ps(x, y, acc[k]);
        __asm__ volatile("" : "+x"(x));
    }
    double elapsed = seconds() - start;
    float out[8], sink = 0;
    for (int i = 0; i < chains; i++) {
        _mm256_storeu_ps(out, acc[i]);
        sink += out[0];
    }
    __asm__ volatile("" : : "x"(sink));
    return rounds * chains * 8.0 * 2 / elapsed / 1e9;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16_avx512(void) {
    __m512 acc[chains];
    for (int i = 0; i < chains; i++) acc[i] = _mm512_setzero_ps();
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3F80), b = a;
    double start = seconds();
    for (long r = 0; r < rounds; r++) {
        for (int k = 0; k < chains; k++) acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    double elapsed = seconds() - start;
    float sink = 0;
    for (int i = 0; i < chains; i++) sink += _mm512_reduce_add_ps(acc[i]);
    __asm__ volatile("" : : "x"(sink));
    return rounds * chains * 32.0 * 2 / elapsed / 1e9;
}

int main(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) printf("fp32 %.1f GFLOPS per core (AVX-512 FMA)\n", fp32_avx512());
    else if (__builtin_cpu_supports("avx2")) printf("fp32 %.1f GFLOPS per core (AVX2 FMA)\n", fp32_avx2());
    if (__builtin_cpu_supports("avx512bf16")) printf("bf16 %.1f GFLOPS per core (AVX512_BF16 dot products)\n", bf16_avx512());
    else printf("bf16 - (no AVX512_BF16)\n");
    return 0;
}
