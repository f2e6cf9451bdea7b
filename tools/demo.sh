#!/usr/bin/env bash
# The main job on the embedded default: the small model and PCam-like TIFFs under fixtures/.
# Usage: tools/demo.sh [path/to/resnetkit]
set -euo pipefail
cd "$(dirname "$0")/.."
resnetkit=${1:-.build/release/resnetkit}
mkdir -p out
if "$resnetkit" help batch-infer >/dev/null 2>&1 && [[ -f fixtures/default-model.safetensors ]]; then
    rm -f out/demo-preds.csv out/demo-preds.csv.errors.csv
    "$resnetkit" batch-infer fixtures/images --model fixtures/default-model.safetensors --out out/demo-preds.csv
    echo "--- out/demo-preds.csv (first rows)"
    head -5 out/demo-preds.csv
else
    "$resnetkit" inspect ../shared/reference/resnet18.safetensors --input-size 16x3x49x49
fi
