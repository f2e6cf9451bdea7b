#!/usr/bin/env bash
# infer-slide on a (large) slide against batch-infer on the same tiles cut out as TIFF files: logits, speed, memory,
# and a killed run resumed. Make a slide first, e.g. python3 tools/make_slide.py /tmp/slide.tif --size 12288
#
# Usage: tools/check_slide.sh SLIDE MODEL [WORK] [extra infer-slide options...]
#   WORK (default /tmp/check-slide) receives tiles.csv, heat.png, overlay.png, tiles/ (one TIFF per kept tile),
#   batch.csv, killed.csv. Prints: tiles and tiles/s, batch-infer's images/s, the largest logit difference, both
#   peak RSS figures and the slide's decoded size, and whether the resumed run holds every tile once.
#   TILE_COMPRESSION=zlib writes the tile files with Deflate (as the slide's tiles are) instead of uncompressed;
#   TILE=N when --tile N is passed; KILL_AFTER=S seconds before the kill (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
slide=$1 model=$2 work=${3:-/tmp/check-slide}
shift $(( $# < 3 ? $# : 3 ))
bin=.build/release/resnetkit
[[ -x $bin ]] || swift build -c release --product resnetkit
rm -rf "$work" && mkdir -p "$work"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"

/usr/bin/time -f "%M" -o "$work/slide.rss" $bin infer-slide "$slide" --out "$work/tiles.csv" --model "$model" \
    --heatmap "$work/heat.png" --overlay "$work/overlay.png" "$@" 2> >(tee "$work/slide.log" >&2)

python3 - "$slide" "$work" <<'EOF'
import csv, os, sys
import numpy as np, tifffile
slide, work = sys.argv[1:3]
rows = list(csv.DictReader(open(os.path.join(work, "tiles.csv"))))
level0 = tifffile.imread(slide, key=0)
side = int(os.environ.get("TILE", "96"))
os.makedirs(os.path.join(work, "tiles"), exist_ok=True)
for r in rows:
    x, y = int(r["x"]), int(r["y"])
    tifffile.imwrite(os.path.join(work, "tiles", f"{x}_{y}.tif"), np.ascontiguousarray(level0[y:y + side, x:x + side]),
                     photometric="rgb", compression=os.environ.get("TILE_COMPRESSION"))
print(f"cut {len(rows)} tiles; level 0 decoded: {level0.nbytes / 1e6:.0f} MB")
EOF

/usr/bin/time -f "%M" -o "$work/batch.rss" $bin batch-infer "$work/tiles" --out "$work/batch.csv" --model "$model" \
    2> >(tee "$work/batch.log" >&2)

# Killed after a few seconds, then resumed.
$bin infer-slide "$slide" --out "$work/killed.csv" --model "$model" --quiet "$@" &
pid=$!
sleep "${KILL_AFTER:-8}"
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
before=$(($(wc -l < "$work/killed.csv") - 1))
$bin infer-slide "$slide" --out "$work/killed.csv" --model "$model" --resume --quiet "$@"

python3 - "$work" "$before" <<'EOF'
import csv, os, sys
work, before = sys.argv[1], int(sys.argv[2])
slide = {f"{r['x']}_{r['y']}": r for r in csv.DictReader(open(os.path.join(work, "tiles.csv")))}
batch = {r["id"]: r for r in csv.DictReader(open(os.path.join(work, "batch.csv")))}
assert set(slide) == set(batch), "different tiles"
logits = [k for k in next(iter(slide.values())) if k.startswith("logit_")]
diff = max(abs(float(slide[t][k]) - float(batch[t][k])) for t in slide for k in logits)
scale = max(abs(float(batch[t][k])) for t in batch for k in logits)
labels = sum(slide[t]["label"] != batch[t]["label"] for t in slide)
print(f"logits: max |infer-slide - batch-infer| = {diff:.3g} (relative {diff / scale:.3g}) over {len(slide)} tiles; labels differing: {labels}")
killed = [f"{r['x']}_{r['y']}" for r in csv.DictReader(open(os.path.join(work, "killed.csv")))]
once = len(killed) == len(set(killed)) and set(killed) == set(slide)
kdiff = max(abs(float(r[k]) - float(slide[f"{r['x']}_{r['y']}"][k])) for r in csv.DictReader(open(os.path.join(work, "killed.csv"))) for k in logits)
print(f"kill -9 after {before} rows, resumed: {len(killed)} rows, every tile once: {once}; max logit difference to the uninterrupted run {kdiff:.3g}")
EOF
rate() { grep -oE '[0-9.]+ (tiles|images)/s' "$1" | tail -1; }
echo "infer-slide: $(rate "$work/slide.log"), peak RSS $(( $(cat "$work/slide.rss") / 1024 )) MB"
echo "batch-infer: $(rate "$work/batch.log"), peak RSS $(( $(cat "$work/batch.rss") / 1024 )) MB"
