#!/usr/bin/env bash
# The README's infer-slide and explain pictures (docs/slide-heatmap.png, docs/slide-overlay.png, docs/gradcam.png):
# a 4096-pixel synthetic slide (tools/make_slide.py) through infer-slide with the default fixture model, and
# explain on two fixture patches. The model has random weights, so the colours show the mechanics, not pathology.
# The overlay is downscaled to 512 pixels and both explain outputs are enlarged 4x (nearest) for the page.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/slide-pictures}
bin=.build/release/resnetkit
rm -rf "$work" && mkdir -p "$work" docs
python3 tools/make_slide.py "$work/slide.tif" --size 4096 --levels 3
$bin infer-slide "$work/slide.tif" --out "$work/tiles.csv" --model fixtures/default-model.safetensors \
    --heatmap "$work/heat.png" --overlay "$work/overlay.png" --quiet
ids="0e1a308beda2ae65c4c0bcdf61d4c8626827264b 2f5f633c561827dec1b95bf89d41d78f44872c79"
$bin explain $(for id in $ids; do echo fixtures/images/$id.tif; done) --model fixtures/default-model.safetensors \
    --out "$work/cams" --class 1 --quiet
python3 - "$work" $ids <<'EOF'
import sys
from PIL import Image
work, ids = sys.argv[1], sys.argv[2:]
Image.open(f"{work}/heat.png").resize((336, 336), Image.NEAREST).save("docs/slide-heatmap.png", optimize=True)
overlay = Image.open(f"{work}/overlay.png").resize((512, 512), Image.LANCZOS)
overlay.quantize(128).save("docs/slide-overlay.png", optimize=True)
# Per patch: the network's 49x49 crop, then explain's picture (CAM at 40 % over it), each 4x.
tiles = []
for i in ids:
    patch = Image.open(f"fixtures/images/{i}.tif").convert("RGB").crop((24, 24, 73, 73))
    tiles += [patch, Image.open(f"{work}/cams/{i}.png").convert("RGB")]
sheet = Image.new("RGB", (len(tiles) * 200 - 4, 196), "white")
for n, t in enumerate(tiles):
    sheet.paste(t.resize((196, 196), Image.NEAREST), (n * 200, 0))
sheet.save("docs/gradcam.png", optimize=True)
EOF
ls -l docs/slide-heatmap.png docs/slide-overlay.png docs/gradcam.png
