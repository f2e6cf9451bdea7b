#!/usr/bin/env bash
# resnetkit fine-tune vs PyTorch (tools/finetune_pytorch.py) on the same labelled set, the same recipe and the same
# validation images: the issue's "final validation accuracy within 2 points of PyTorch's".
#
#   tools/compare_finetune.sh [OUT] [extra recipe options for both tools...]
#
# OUT (default /tmp/cmpset): the synthetic Kaggle-layout set from tools/make_labelled_set.py (--train 2000 --test 600
# --seed 1; made when OUT/train_labels.csv is missing; for real images, make OUT first with tools/make_digits_set.py,
# the UCI handwritten digits) and the starting model, imported from the reference ONNX file
# (random-weight backbone; made when OUT/model.safetensors is missing). Both tools train on OUT/train and validate
# on OUT/test (--valid-dir/--valid-labels, so both see exactly the same validation images) with
#   --head-epochs 2 --finetune-epochs 2 --batch-size 16 (other options: the recipe's defaults)
# plus any extra options (e.g. --train-size 96, --frozen-bn eval, --no-augment). SEEDS="1 2 3" repeats the pair per
# seed and compares the means (one seed by default). Prints each final val_acc and the difference in points; exits 1
# when the (mean) difference exceeds LIMIT points (default 2).
# Environment: PYTHON (default /opt/pyref/bin/python), RESNETKIT (default .build/release/resnetkit, built if missing),
# RK_OPTIONS (options for resnetkit's run only, e.g. "--precision bf16"), BASELINE (pytorch, the default; or
# resnetkit: the baseline is then resnetkit without RK_OPTIONS, e.g. bf16 against fp32 with LIMIT=1).
set -euo pipefail
# Let every library pick its own kernels (some machines preset OPENBLAS_CORETYPE for older builds).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/cmpset}
[ $# -gt 0 ] && shift
PYTHON=${PYTHON:-/opt/pyref/bin/python}
RESNETKIT=${RESNETKIT:-.build/release/resnetkit}
SEEDS=${SEEDS:-1}
LIMIT=${LIMIT:-2}
BASELINE=${BASELINE:-pytorch}
read -r -a RK_EXTRA <<< "${RK_OPTIONS:-}"
RECIPE=(--head-epochs 2 --finetune-epochs 2 --batch-size 16)

[ -x "$RESNETKIT" ] || swift build -c release
if [ ! -f "$OUT/train_labels.csv" ] || [ ! -f "$OUT/test_labels.csv" ]; then
    "$PYTHON" tools/make_labelled_set.py "$OUT" --train 2000 --test 600 --seed 1
fi
if [ ! -f "$OUT/model.safetensors" ]; then
    "$RESNETKIT" import-weights /work/shared/reference/resnet18.onnx --out "$OUT/model.safetensors"
fi

COMMON=("$OUT/train" --labels "$OUT/train_labels.csv" --from "$OUT/model.safetensors"
        --valid-dir "$OUT/test" --valid-labels "$OUT/test_labels.csv" "${RECIPE[@]}" "$@")
# One resnetkit run (seed, name, extra options): prints its epoch lines to stderr, its final val_acc to stdout.
resnetkit_run() {
    local seed=$1 name=$2
    shift 2
    echo "== seed $seed: resnetkit fine-tune ${RECIPE[*]} $*" >&2
    local start
    start=$(date +%s)
    "$RESNETKIT" fine-tune "${COMMON[@]}" "$@" --seed "$seed" --out "$OUT/$name-$seed.safetensors" \
        --history "$OUT/$name-$seed.csv" --quiet --force
    echo "   ($(( $(date +%s) - start )) s)" >&2
    # resnetkit ran --quiet: its epoch lines again from the history (an epoch's last step row holds the train
    # averages, its epoch row the validation figures); the last epoch row holds the final validation accuracy.
    "$PYTHON" - "$OUT/$name-$seed.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
epochs = {}
for r in rows:
    epochs.setdefault(r["phase"], set()).add(int(r["epoch"]))
for i, r in enumerate(rows):
    if r["kind"] == "epoch":
        s = rows[i - 1]
        print(f"[Epoch: {int(r['epoch']):02d}/{max(epochs[r['phase']]):02d}] loss: {float(s['average_loss']):.4f} "
              f"acc: {float(s['average_accuracy']):.4f} val_loss: {float(r['val_loss']):.4f} val_acc: {float(r['val_accuracy']):.4f}",
              file=sys.stderr)
print([r for r in rows if r["kind"] == "epoch"][-1]["val_accuracy"])
PY
}

rk_accs=() pt_accs=()
for seed in $SEEDS; do
    rk=$(resnetkit_run "$seed" resnetkit "${RK_EXTRA[@]}")
    if [ "$BASELINE" = resnetkit ]; then
        pt=$(resnetkit_run "$seed" baseline)
    else
        echo "== seed $seed: tools/finetune_pytorch.py ${RECIPE[*]} $*" >&2
        start=$(date +%s)
        "$PYTHON" tools/finetune_pytorch.py "${COMMON[@]}" --seed "$seed" --summary "$OUT/pytorch-$seed.json" --quiet
        echo "   ($(( $(date +%s) - start )) s)" >&2
        pt=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["final_val_acc"])' "$OUT/pytorch-$seed.json")
    fi
    rk_accs+=("$rk") pt_accs+=("$pt")
done

BASE_LABEL=$([ "$BASELINE" = resnetkit ] && echo "baseline (resnetkit without RK_OPTIONS)" || echo pytorch)
"$PYTHON" - "$LIMIT" "$BASE_LABEL" "${rk_accs[*]}" "${pt_accs[*]}" $SEEDS <<'EOF'
import os, sys
limit, base = float(sys.argv[1]), sys.argv[2]
tag = f" ({os.environ['RK_OPTIONS']})" if os.environ.get("RK_OPTIONS") else ""
rk, pt, seeds = [float(v) for v in sys.argv[3].split()], [float(v) for v in sys.argv[4].split()], sys.argv[5:]
for s, r, p in zip(seeds, rk, pt):
    print(f"seed {s}: resnetkit{tag} val_acc {r:.4f}  {base} val_acc {p:.4f}  difference {100 * (r - p):+.2f} points")
mr, mp = sum(rk) / len(rk), sum(pt) / len(pt)
d = 100 * (mr - mp)
label = "mean over seeds " + " ".join(seeds) + ": " if len(rk) > 1 else ""
print(f"{label}resnetkit{tag} val_acc {mr:.4f}  {base} val_acc {mp:.4f}  difference {d:+.2f} points "
      f"({'within' if abs(d) <= limit else 'NOT within'} {limit:g})")
sys.exit(0 if abs(d) <= limit else 1)
EOF
