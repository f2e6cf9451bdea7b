#!/usr/bin/env bash
# The bf16 training speed targets in one run: tools/bench_training.sh at batch 16 and 64 on 49x49 crops (the
# seed's), then each target beside its measured ratio, with the machine it ran on. For an AMX machine, where the
# targets were set: run it there and paste its output into the README.
#   tools/check_bf16_training_targets.sh [rounds]      (PYTHON: a python with torch/torchvision, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for batch in 16 64; do
    echo "== batch $batch" >> "$log"
    tools/bench_training.sh "$rounds" "$batch" 49 >> "$log" 2>&1
done
grep -m1 '^machine:' "$log" || true
echo "oneDNN ISA and kernels: RESNETKIT_LOG=debug resnetkit fine-tune … --precision bf16 lists them per convolution"
echo
# The summary rows of bench_training.sh: phase rk-fp32 rk-bf16 pt-fp32 pt-bf16 bf16/fp32 bf16/pytorch-best.
awk '/^== batch/ { batch = $3 }
     batch && ($1 == "head" || $1 == "whole") && NF == 7 { ours[$1 "," batch] = $6; pytorch[$1 "," batch] = $7 }
     function verdict(value, target) { v = value; sub(/x$/, "", v); return sprintf("%-6s %-8s", value, (v + 0 >= target) ? "met" : "not met") }
     END {
         printf "%-52s %-16s %-16s\n", "target", "batch 16", "batch 64"
         printf "%-52s %-16s %-16s\n", "whole model bf16 >= 2x our fp32", verdict(ours["whole,16"], 2), verdict(ours["whole,64"], 2)
         printf "%-52s %-16s %-16s\n", "whole model bf16 >= 3x PyTorch (best of fp32, bf16)", verdict(pytorch["whole,16"], 3), verdict(pytorch["whole,64"], 3)
         printf "%-52s %-16s %-16s\n", "head phase bf16 >= 2x our fp32 (train-mode BN)", verdict(ours["head,16"], 2), verdict(ours["head,64"], 2)
     }' "$log"
echo
echo "medians of $rounds rounds (tools/bench_training.sh):"
grep -E '^(== batch|phase|head|head-eval|whole) ' "$log"
