#!/usr/bin/env bash
# The main job on the embedded default: the small model and PCam-like TIFFs under fixtures/ → out/demo-preds.csv.
# Usage: tools/demo.sh [path/to/resnetkit]
set -euo pipefail
cd "$(dirname "$0")/.."
resnetkit=${1:-.build/release/resnetkit}
mkdir -p out
rm -f out/demo-preds.csv out/demo-preds.csv.errors.csv
"$resnetkit" batch-infer fixtures/images --model fixtures/default-model.safetensors --out out/demo-preds.csv
echo "--- out/demo-preds.csv (first rows)"
head -5 out/demo-preds.csv
