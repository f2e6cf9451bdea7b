#!/bin/bash
# Times `resnetkit batch-infer` against the Python pipeline (tifffile + ONNX Runtime with 2 threads + csv,
# batch 64) on N PCam-like 96x96 TIFFs, at crop 49 and at 96, with the full-size ResNet-18; then compares
# batch-infer's peak RSS on 400 and on all N images (it must stay flat: the loader prefetches ~2 batches).
#
#   tools/bench_batch_infer.sh [N]          N defaults to 4000; run on a quiet machine after
#                                           `swift build -c release`.
# Environment: RESNETKIT (binary, default .build/release/resnetkit), PYTHON (default /opt/pyref/bin/python),
# MODEL (default ../shared/reference/resnet18.safetensors), THREADS (default 2), KEEP=1 keeps the temp folder.
set -euo pipefail
# Let every library pick its own kernels (some machines preset OPENBLAS_CORETYPE for older builds).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE

N=${1:-4000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RESNETKIT=${RESNETKIT:-$ROOT/.build/release/resnetkit}
PYTHON=${PYTHON:-/opt/pyref/bin/python}
MODEL=${MODEL:-$ROOT/../shared/reference/resnet18.safetensors}
THREADS=${THREADS:-2}
PIPELINE=$ROOT/tools/python_pipeline.py

[ -x "$RESNETKIT" ] || { echo "no $RESNETKIT: run swift build -c release first" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "no model at $MODEL (set MODEL=)" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-batch-infer.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

echo "generating $N PCam-like images in $WORK/images"
"$PYTHON" "$PIPELINE" generate "$WORK/images" "$N"
SMALL=$(( N < 400 ? N : 400 ))
mkdir -p "$WORK/small"
ls "$WORK/images" | awk -v n="$SMALL" 'NR <= n' | while read -r f; do ln -s "$WORK/images/$f" "$WORK/small/$f"; done

# The same weights as ONNX: resnetkit's own exporter when this build has one, else PyTorch's.
if "$RESNETKIT" --help 2>/dev/null | grep -q "^  *export-onnx"; then
    echo "exporting ONNX with resnetkit export-onnx"
    "$RESNETKIT" export-onnx "$MODEL" --out "$WORK/model.onnx" >/dev/null
else
    echo "exporting ONNX with PyTorch (resnetkit export-onnx is not in this build)"
    "$PYTHON" "$PIPELINE" export "$MODEL" "$WORK/model.onnx" 2>/dev/null
fi

# Runs a command under /usr/bin/time -v; sets SECONDS_TAKEN and PEAK_KB.
measure() {
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
        status=$?
        if [ $status -ne 3 ]; then echo "failed ($status): $*" >&2; cat "$WORK/stderr.txt" >&2; exit 1; fi
    }
    SECONDS_TAKEN=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$WORK/time.txt")
    PEAK_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
}

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }'; }

printf '\n%-8s %18s %18s %8s\n' crop "resnetkit img/s" "python img/s" ratio
for CROP in 49 96; do
    rm -f "$WORK/resnetkit.csv" "$WORK/resnetkit.csv.errors.csv"
    measure "$RESNETKIT" batch-infer "$WORK/images" --out "$WORK/resnetkit.csv" --model "$MODEL" --crop "$CROP" \
        --batch-size 64 --threads "$THREADS" --quiet
    OURS=$(rate "$N" "$SECONDS_TAKEN")
    [ "$CROP" = 96 ] && OURS_PEAK_FULL=$PEAK_KB
    measure "$PYTHON" "$PIPELINE" run "$WORK/images" "$WORK/model.onnx" "$WORK/python.csv" --crop "$CROP" \
        --batch-size 64 --threads "$THREADS"
    THEIRS=$(rate "$N" "$SECONDS_TAKEN")
    [ "$CROP" = 96 ] && PYTHON_PEAK_FULL=$PEAK_KB
    printf '%-8s %18s %18s %8s\n' "$CROP" "$OURS" "$THEIRS" "$(awk -v a="$OURS" -v b="$THEIRS" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }')"
    # Same weights, same preprocessing: the same ids and (but for near-ties) the same labels.
    DIFFERENT=$(comm -3 <(awk -F, 'NR > 1 { print $1 "," $NF }' "$WORK/resnetkit.csv" | sort) \
                        <(awk -F, 'NR > 1 { print $1 "," $NF }' "$WORK/python.csv" | sort) | wc -l)
    [ "$DIFFERENT" -eq 0 ] || echo "warning: crop $CROP: $DIFFERENT id,label lines differ between the two outputs" >&2
done

rm -f "$WORK/small.csv" "$WORK/small.csv.errors.csv"
measure "$RESNETKIT" batch-infer "$WORK/small" --out "$WORK/small.csv" --model "$MODEL" --crop 96 \
    --batch-size 64 --threads "$THREADS" --quiet
OURS_PEAK_SMALL=$PEAK_KB
measure "$PYTHON" "$PIPELINE" run "$WORK/small" "$WORK/model.onnx" "$WORK/python-small.csv" --crop 96 --threads "$THREADS"
PYTHON_PEAK_SMALL=$PEAK_KB
printf '\npeak RSS at crop 96 (MB):   %8s %8s\n' "$SMALL img" "$N img"
printf '  resnetkit batch-infer     %8d %8d\n' $((OURS_PEAK_SMALL / 1024)) $((OURS_PEAK_FULL / 1024))
printf '  python pipeline           %8d %8d\n' $((PYTHON_PEAK_SMALL / 1024)) $((PYTHON_PEAK_FULL / 1024))
