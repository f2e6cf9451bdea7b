#!/usr/bin/env bash
# Training throughput: ResNetKit vs PyTorch at 49x49, head phase (frozen backbone, BatchNorm in train mode: the
# seed's setup) and whole model, the two tools alternating round by round so that other load on the machine hits
# both alike; prints each round and the median of each, with ratios.
#   tools/bench_training.sh [rounds] [batch]      (needs /opt/pyref or PYTHON with torch/torchvision)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
batch=${2:-16}
python=${PYTHON:-/opt/pyref/bin/python}
swift build -c release --product resnetkit-bench >/dev/null
clean=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq "$rounds"); do
    "${clean[@]}" .build/release/resnetkit-bench train --batches "$batch" --steps 100 --phases head-train,whole |
        awk -v r="$round" '/head, frozen BN train/ {print r, "resnetkit", "head", $(NF-1)} /whole model/ {print r, "resnetkit", "whole", $(NF-1)}'
    "${clean[@]}" "$python" tools/bench_train_pytorch.py --batches "$batch" --steps 50 |
        awk -v r="$round" '/head \(frozen/ {print r, "pytorch", "head", $(NF-1)} /whole model/ {print r, "pytorch", "whole", $(NF-1)}'
done | tee "$log"
echo
echo "median img/s over $rounds rounds, batch $batch, 49x49"
awk '{v[$2" "$3] = v[$2" "$3] " " $4}
     function median(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
     END { for (p in v) m[p] = median(v[p])
           printf "phase   resnetkit   pytorch   ratio\n"
           split("head whole", phases, " ")
           for (i = 1; i <= 2; i++) { q = phases[i]; printf "%-5s  %10.1f  %8.1f  %5.2fx\n", q, m["resnetkit " q], m["pytorch " q], m["resnetkit " q] / m["pytorch " q] } }' "$log"
