#!/usr/bin/env bash
# Inference throughput: ResNetKit vs ONNX Runtime vs PyTorch on the same weights, side by side.
#   tools/bench_inference.sh [seconds-per-case]      (needs /opt/pyref or PYTHON with onnxruntime/torch for the comparison)
# OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset for this run only, so every library picks its own kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3}
python=${PYTHON:-/opt/pyref/bin/python}
swift build -c release --product resnetkit-bench >/dev/null
clean=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
ours=$("${clean[@]}" .build/release/resnetkit-bench infer --seconds "$seconds")
echo "$ours"
if [[ -x $python ]]; then
    theirs=$("${clean[@]}" "$python" tools/bench_inference_reference.py --seconds "$seconds" 2>/dev/null)
    echo "$theirs"
    echo
    echo "ratio (ResNetKit img/s ÷ other img/s)"
    printf '%s\n' "$ours" "===" "$theirs" | awk '
        /^ResNetKit/ {who="rk"} /^ONNX Runtime/ {who="ort"} /^PyTorch/ {who="pt"}
        $1 ~ /^[0-9]+$/ && NF >= 3 {rate[who, $1, $2] = $3; keys[$1" "$2] = 1}
        END {
            print "batch  side   vs ORT   vs PyTorch"
            for (k in keys) { split(k, p, " ");
                printf "%5d  %4d  %6.2fx  %8.2fx\n", p[1], p[2], rate["rk",p[1],p[2]] / rate["ort",p[1],p[2]], rate["rk",p[1],p[2]] / rate["pt",p[1],p[2]] }
        }' | sort -k2n -k1n
fi
