#!/usr/bin/env bash
# What this machine's arithmetic allows a ResNet-18 training step at most, beside the bf16 training targets: the
# measured peak of one core (tools/peak_flops.c: fp32 FMAs, bf16 dot products), times the cores, over the
# convolutions' useful work per image (forward, backward-data except the stem's, backward-weights; taps that
# fall on padding not counted). The ceiling assumes convolutions at 100 % of peak and every other part of the step
# (BatchNorm, AdamW, pooling, the head) free.
#   tools/training_roofline.sh [side] [PyTorch's best img/s ...]     (default side 49, the seed's crop)
# With PyTorch's best whole-model figure (tools/bench_training.sh), it prints the share of bf16 peak that 3x it
# needs. Needs a C compiler (CC, default clang) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
side=${1:-49}
shift || true
binary=$(mktemp)
trap 'rm -f "$binary"' EXIT
"${CC:-clang}" -O2 tools/peak_flops.c -o "$binary"
cores=$(nproc)
peaks=$("$binary")
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $cores cores"
echo "$peaks"
fp32=$(awk '$1 == "fp32" { print $2 }' <<<"$peaks")
bf16=$(awk '$1 == "bf16" && $2 != "-" { print $2 }' <<<"$peaks")
python3 - "$side" "$cores" "$fp32" "${bf16:-0}" "$@" <<'PY'
import sys
side, cores, fp32, bf16 = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
pytorch = [float(v) for v in sys.argv[5:]]

def out(n, k, s, p):
    return (n + 2 * p - k) // s + 1

def conv(n, cin, cout, k, s, p):
    """Output side and multiply-adds on in-bounds taps of one convolution, one image."""
    o = out(n, k, s, p)
    taps = sum(1 for y in range(o) for ky in range(k) if 0 <= y * s - p + ky < n)
    return o, taps * taps * cin * cout

n, stem = conv(side, 3, 64, 7, 2, 3)
forward, n, cin = stem, out(n, 3, 2, 1), 64
for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
    for block in range(2):
        s = stride if block == 0 else 1
        n1, a = conv(n, cin, cout, 3, s, 1)
        _, b = conv(n1, cout, cout, 3, 1, 1)
        forward += a + b
        if s != 1 or cin != cout:
            forward += conv(n, cin, cout, 1, s, 0)[1]
        n, cin = n1, cout
gflop = 2 * (3 * forward - stem) / 1e9  # backward-data skips the stem (no input gradient)
print(f"ResNet-18 at {side}x{side}: {gflop:.3f} GFLOP of useful convolution work per training image")
print(f"ceiling, convolutions at peak and nothing else: fp32 {cores * fp32 / gflop:.0f} img/s", end="")
print(f", bf16 {cores * bf16 / gflop:.0f} img/s" if bf16 else "")
for best in pytorch:
    need = 3 * best * gflop
    share = f"{100 * need / (cores * bf16):.0f} % of the bf16 peak" if bf16 else "no bf16 peak measured"
    print(f"3x PyTorch's {best:.0f} img/s = {3 * best:.0f} img/s: {need:.0f} GFLOPS of convolutions, {share}")
PY
