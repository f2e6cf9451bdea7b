"""Writes the batch-infer fixtures:

  fixtures/images/<40-hex id>.tif    12 PCam-like patches: 96x96 RGB 8-bit, uncompressed, one strip per 8 rows
  fixtures/default-model.safetensors a small ResNet-18 (base width 8, MLP head with 32 hidden units, 2 classes,
                                     random BatchNorm statistics) with ResNetKit's checkpoint metadata
                                     (preprocessing: centre crop 49, ImageNet normalisation, RGB)
  fixtures/images/expected-logits.csv          ONNX Runtime's logits with the checkpoint's preprocessing
  fixtures/images/expected-logits-full-none-bgr.csv   ... with --crop 0 --normalize none --channel-order bgr

The same PyTorch module is exported to ONNX (TorchScript exporter, opset 17) and run by ONNX Runtime on the
images as tifffile reads them, cropped by torchvision's `center_crop`; so the expected values are independent
of ResNetKit's decoder, crop and network code. Run: /opt/pyref/bin/python tools/make_default_fixtures.py
"""
import hashlib
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort
import tifffile
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms.functional import center_crop

from fixture_models import ResNet18

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
WIDTH, HIDDEN, CLASSES = 8, 32, 2
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def make_model(calibration):
    """Random weights; each BatchNorm's running statistics are the batch statistics of `calibration` (so that
    activations keep their scale and the logits depend clearly on the image), times random factors."""
    torch.manual_seed(0)
    model = ResNet18(WIDTH, CLASSES, head="mlp", hidden=HIDDEN)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        for module in norms:
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
            module.momentum = 1.0
        model.train()(calibration)
        for module in norms:
            module.momentum = 0.1
            module.running_mean.mul_(torch.empty_like(module.running_mean).uniform_(0.8, 1.2))
            module.running_var.mul_(torch.empty_like(module.running_var).uniform_(0.8, 1.2))
            module.num_batches_tracked.fill_(1000)
    return model.eval()


def make_images(rng):
    """PCam-like texture: H&E pink/purple background, dark nuclei-like blobs, pixel noise."""
    images = {}
    y, x = np.mgrid[0:96, 0:96]
    for _ in range(12):
        ident = hashlib.sha1(rng.bytes(16)).hexdigest()
        base = np.array([rng.uniform(180, 240), rng.uniform(120, 190), rng.uniform(170, 230)])
        image = np.broadcast_to(base, (96, 96, 3)).copy()
        for _ in range(rng.integers(8, 30)):
            cy, cx, r = rng.uniform(0, 96), rng.uniform(0, 96), rng.uniform(2, 9)
            blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
            image -= blob * np.array([rng.uniform(60, 140), rng.uniform(80, 150), rng.uniform(20, 80)])
        image += 6 * np.sin(x / rng.uniform(3, 12))[..., None] + rng.normal(0, 8, (96, 96, 3))
        images[ident] = np.clip(image, 0, 255).astype(np.uint8)
    return images


def metadata():
    compact = dict(sort_keys=True, separators=(",", ":"))
    return {
        "format": "resnetkit-checkpoint/1",
        "config": json.dumps({"numClasses": CLASSES, "head": "mlp", "hiddenUnits": HIDDEN, "dropout": 0.5,
                              "baseWidth": WIDTH, "batchNormEpsilon": 1e-5}, **compact),
        "classes": json.dumps(["0", "1"], **compact),
        "preprocessing": json.dumps({"crop": 49, "normalization": "imagenet", "channelOrder": "rgb"}, **compact),
        "provenance": json.dumps({"source": "synthetic", "sourceSHA256": "", "producer": "tools/make_default_fixtures.py",
                                  "notes": ["random weights for tests"]}, **compact),
    }


def prepare(pixels, crop, normalize, bgr):
    """uint8 HWC → float NCHW as the network expects it."""
    x = pixels.astype(np.float32) / 255
    if bgr:
        x = x[:, :, ::-1]
    if normalize:
        x = (x - (MEAN[::-1] if bgr else MEAN)) / (STD[::-1] if bgr else STD)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    if crop:
        t = center_crop(t, [crop, crop])
    return t.numpy()


def write_expected(session, files, path, crop, normalize, bgr):
    ids = sorted(files)
    batch = np.stack([prepare(tifffile.imread(files[i]), crop, normalize, bgr) for i in ids])
    logits = session.run(None, {"input": batch})[0]
    with open(path, "w") as f:
        f.write("id," + ",".join(f"logit_{k}" for k in range(CLASSES)) + ",label\n")
        for ident, row in zip(ids, logits):
            f.write(ident + "," + ",".join(f"{float(v):.9g}" for v in row) + f",{int(np.argmax(row))}\n")


def main():
    rng = np.random.default_rng(2024)
    images_dir = os.path.join(ROOT, "images")
    os.makedirs(images_dir, exist_ok=True)
    files = {}
    for ident, pixels in make_images(rng).items():
        files[ident] = os.path.join(images_dir, ident + ".tif")
        tifffile.imwrite(files[ident], pixels, photometric="rgb", rowsperstrip=8)
    calibration = torch.from_numpy(np.stack([prepare(tifffile.imread(files[i]), 49, True, False) for i in sorted(files)]))
    model = make_model(calibration)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(ROOT, "default-model.safetensors"), metadata=metadata())
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(model, torch.zeros(1, 3, 49, 49), onnx_path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        write_expected(session, files, os.path.join(images_dir, "expected-logits.csv"), 49, True, False)
        write_expected(session, files, os.path.join(images_dir, "expected-logits-full-none-bgr.csv"), 0, False, True)


if __name__ == "__main__":
    main()
