#!/usr/bin/env bash
# The errors of the PyTorch reference tests under each OpenBLAS kernel, side by side: the measured spread that
# the chaotic whole-model trajectory's tolerance is set from (see TrainingReferenceTests and docs/numerics.md).
# Every kernel can be forced on an AVX-512 machine.
# Usage: tools/kernel_spread.sh [KERNEL...]     (default: Prescott Haswell SkylakeX Cooperlake Zen)
set -euo pipefail
cd "$(dirname "$0")/.."
kernels=("$@")
[[ ${#kernels[@]} -gt 0 ]] || kernels=(Prescott Haswell SkylakeX Cooperlake Zen)
swift build -c release --build-tests -Xswiftc -enable-testing >/dev/null
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for kernel in "${kernels[@]}"; do
    echo "== OPENBLAS_CORETYPE=$kernel"
    OPENBLAS_CORETYPE=$kernel swift test -c release --skip-build --disable-swift-testing \
        --filter 'TrainingReferenceTests' 2>&1 | grep -E '^(step 0|full|head_)|error:' || true
done
