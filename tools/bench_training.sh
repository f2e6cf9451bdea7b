#!/usr/bin/env bash
# Training throughput: ResNetKit (fp32, and bf16 on oneDNN: `fine-tune --precision bf16`) vs PyTorch (fp32 and bf16
# CPU autocast) at 49x49 (or SIDE, e.g. 96: PCam's own size), head phase (frozen backbone: BatchNorm in train mode, the seed's setup, and for ResNetKit
# also in eval mode, which runs the frozen backbone as inference) and whole model, the two tools alternating round
# by round so that other load on the machine hits both alike; prints each round and the median of each, with ratios.
#   tools/bench_training.sh [rounds] [batch] [side]      (PYTHON: a python with torch/torchvision, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
batch=${2:-16}
side=${3:-49}
python=${PYTHON:-python3}
swift build -c release --product resnetkit-bench >/dev/null
clean=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq "$rounds"); do
    "${clean[@]}" .build/release/resnetkit-bench train --batches "$batch" --sides "$side" --steps 20 --phases head-train,head-eval,whole --precision fp32,bf16 |
        awk -v r="$round" '/^machine:/ && r == 1 {print > "/dev/stderr"} /frozen BN train/ {print r, "resnetkit-" $3, "head", $(NF-1)} /frozen BN eval/ {print r, "resnetkit-" $3, "head-eval", $(NF-1)}
                           /whole model/ {print r, "resnetkit-" $3, "whole", $(NF-1)}'
    "${clean[@]}" "$python" tools/bench_train_pytorch.py --batches "$batch" --side "$side" --steps 10 --precision fp32,bf16 |
        awk -v r="$round" '/head \(frozen/ {print r, "pytorch-" $3, "head", $(NF-1)} /whole model/ {print r, "pytorch-" $3, "whole", $(NF-1)}'
done | tee "$log"
echo
echo "median img/s over $rounds rounds, batch $batch, ${side}x${side}"
awk '{v[$2" "$3] = v[$2" "$3] " " $4}
     function median(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
     function m(k) { return (k in med) ? med[k] : 0 }
     END { for (p in v) med[p] = median(v[p])
           printf "phase       rk-fp32  rk-bf16  pt-fp32  pt-bf16  bf16/fp32  bf16/pytorch-best\n"
           split("head head-eval whole", phases, " ")
           for (i = 1; i <= 3; i++) { q = phases[i]; f = m("resnetkit-fp32 " q); b = m("resnetkit-bf16 " q)
               pf = m("pytorch-fp32 " q); pb = m("pytorch-bf16 " q); best = pf > pb ? pf : pb
               printf "%-10s %8.1f %8.1f %8.1f %8.1f %9.2fx %12s\n", q, f, b, pf, pb, f ? b / f : 0, best ? sprintf("%.2fx", b / best) : "-" } }' "$log"
