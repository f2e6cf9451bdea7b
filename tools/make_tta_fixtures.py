"""Writes fixtures/tta/expected-logits-tta{1,2,4,8}.csv: PyTorch's test-time-augmented logits for the fixture
images (fixtures/images) with the default fixture model, for `batch-infer --tta` and `evaluate --tta`.

The images are read by tifffile and preprocessed as the checkpoint says (ImageNet normalisation, RGB, centre crop
49 by torchvision's `center_crop`); the views are made from the cropped tensor with torch.flip / torch.rot90:
  2: x, hflip(x)    4: x, hflip(x), vflip(x), rot180(x)    8: rot90(x, k) and hflip(rot90(x, k)) for k = 0..3
and each row holds the mean of the views' logits (eval mode), as `torch.stack(views).mean(0)`.
Run: python3 tools/make_tta_fixtures.py (needs torch, torchvision, safetensors, tifffile; not needed by users or CI).
"""
import glob
import os

import numpy as np
import tifffile
import torch
from safetensors.torch import load_file
from torchvision.transforms.functional import center_crop

from fixture_models import ResNet18

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def views(x, n):
    h = lambda t: torch.flip(t, dims=[3])
    if n == 1:
        return [x]
    if n == 2:
        return [x, h(x)]
    if n == 4:
        return [x, h(x), torch.flip(x, dims=[2]), torch.rot90(x, 2, dims=[2, 3])]
    rotations = [torch.rot90(x, k, dims=[2, 3]) for k in range(4)]
    return rotations + [h(r) for r in rotations]


def main():
    model = ResNet18(8, 2, head="mlp", hidden=32)
    model.load_state_dict(load_file(os.path.join(ROOT, "default-model.safetensors")))
    model.eval()
    files = sorted(glob.glob(os.path.join(ROOT, "images", "*.tif")))
    ids = [os.path.basename(f)[:-4] for f in files]
    batch = []
    for f in files:
        x = (tifffile.imread(f).astype(np.float32) / 255 - MEAN) / STD
        batch.append(center_crop(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), [49, 49]))
    x = torch.stack(batch)
    os.makedirs(os.path.join(ROOT, "tta"), exist_ok=True)
    with torch.no_grad():
        for n in (1, 2, 4, 8):
            logits = torch.stack([model(v) for v in views(x, n)]).mean(0)
            with open(os.path.join(ROOT, "tta", f"expected-logits-tta{n}.csv"), "w") as f:
                f.write("id,logit_0,logit_1,label\n")
                for ident, row in zip(ids, logits):
                    f.write(ident + "," + ",".join(f"{float(v):.9g}" for v in row) + f",{int(torch.argmax(row))}\n")


if __name__ == "__main__":
    main()
