#!/usr/bin/env bash
# The design card's whole flow on a synthetic labelled set (Kaggle layout), from a fresh checkout:
#   import-weights resnet18.onnx → fine-tune train --labels train_labels.csv → batch-infer ./test → evaluate.
# Usage: tools/design_card_flow.sh [OUT] [head-epochs] [finetune-epochs]
# Needs: resnetkit on PATH (tools/install.sh) or .build/release; python3 with numpy + tifffile for the data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/flow}
head_epochs=${2:-3}
finetune_epochs=${3:-3}
python=${PYTHON:-python3}
PATH="$root/.build/release:$PATH"
onnx=$root/../shared/reference/resnet18.onnx

mkdir -p "$out"
[[ -d $out/train ]] || "$python" "$root/tools/make_labelled_set.py" "$out" --train 3000 --test 1000
cd "$out"
resnetkit import-weights "$onnx" --calibrate train --force
resnetkit fine-tune train --labels train_labels.csv --valid-dir test --valid-labels test_labels.csv \
    --head-epochs "$head_epochs" --finetune-epochs "$finetune_epochs" \
    --history history.csv --plot history.svg
rm -f preds.csv preds.csv.errors.csv
resnetkit batch-infer test --out preds.csv
resnetkit evaluate test --labels test_labels.csv --model finetuned.safetensors --report report.json --plots plots
