"""Writes fixtures/gradcam/reference.safetensors: PyTorch's Grad-CAM maps that `resnetkit explain` must reproduce.

Grad-CAM by autograd, with a forward hook on layer4 (its output A keeps its gradient):
  alpha_k = mean_ij dy_c/dA_k(i, j);  CAM = ReLU(sum_k alpha_k A_k) / max;  F.interpolate(bilinear, align_corners=False)
to the input size. In float64, so the reference carries no float32 rounding of its own.

Models and images (the first two of fixtures/images, by name):
  resnet18/<id>/...  torchvision's resnet18 with ../shared/reference/resnet18.safetensors (linear head, 1000
                     classes), whole 96x96 image, ImageNet normalisation, RGB: layer4 is 3x3
  default/<id>/...   fixtures/default-model.safetensors (width 8, MLP head with BatchNorm, 2 classes) with its
                     own preprocessing (centre crop 49, ImageNet, RGB): layer4 is 2x2
For each: <...>/predicted [H, W] and <...>/predicted_class [1] (the largest logit's class); default/<id>/class1
[H, W] for class 1 as well. Run: python3 tools/make_gradcam_reference.py
"""
import os
import sys

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from torchvision.transforms.functional import center_crop

sys.path.insert(0, os.path.dirname(__file__))
from fixture_models import ResNet18  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


def prepare(path, crop):
    image = torch.from_numpy(tifffile.imread(path).astype(np.float64) / 255).permute(2, 0, 1)[None]
    if crop:
        image = center_crop(image, [crop, crop])
    return (image - MEAN) / STD


def gradcam(model, x, cls=None):
    saved = {}
    hook = model.layer4.register_forward_hook(lambda module, inputs, output: saved.__setitem__("a", output))
    logits = model(x)
    hook.remove()
    a = saved["a"]
    a.retain_grad()
    c = int(logits[0].argmax()) if cls is None else cls
    logits[0, c].backward()
    alpha = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * a).sum(dim=1, keepdim=True))
    peak = cam.max()
    if peak > 0:
        cam = cam / peak
    up = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    return up[0, 0].detach().float(), c


def main():
    torch.set_grad_enabled(True)
    images = sorted(f for f in os.listdir(os.path.join(ROOT, "fixtures/images")) if f.endswith(".tif"))[:2]
    out = {}

    tv = torchvision.models.resnet18(weights=None)
    state = load_file(os.path.join(ROOT, "../shared/reference/resnet18.safetensors"))
    tv.load_state_dict(state)
    tv = tv.double().eval()
    # torchvision's blocks use in-place ReLU; autograd handles it, and the hook sees the block's final output.
    default = ResNet18(8, 2, head="mlp", hidden=32)
    missing, unexpected = default.load_state_dict(load_file(os.path.join(ROOT, "fixtures/default-model.safetensors")), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    default = default.double().eval()

    for name in images:
        ident = name[:-4]
        path = os.path.join(ROOT, "fixtures/images", name)
        cam, c = gradcam(tv, prepare(path, 0))
        out[f"resnet18/{ident}/predicted"] = cam
        out[f"resnet18/{ident}/predicted_class"] = torch.tensor([float(c)])
        cam, c = gradcam(default, prepare(path, 49))
        out[f"default/{ident}/predicted"] = cam
        out[f"default/{ident}/predicted_class"] = torch.tensor([float(c)])
        out[f"default/{ident}/class1"], _ = gradcam(default, prepare(path, 49), cls=1)
    os.makedirs(os.path.join(ROOT, "fixtures/gradcam"), exist_ok=True)
    target = os.path.join(ROOT, "fixtures/gradcam/reference.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, target)
    for k, v in out.items():
        print(k, tuple(v.shape), f"max {float(v.max()):.4f}" if v.numel() > 1 else int(v.item()))


if __name__ == "__main__":
    main()
