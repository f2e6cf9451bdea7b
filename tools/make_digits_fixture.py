#!/usr/bin/env python3
"""A small trained model for the reduced-precision tests (bf16 / int8 against fp32 PyTorch):

  fixtures/digits/model.safetensors   ResNet-18 at base width 16 with a linear head, trained by PyTorch on the
                                      UCI digits (tools/make_digits_set.py, seed 1, 49x49) for 6 epochs, with
                                      ResNetKit's metadata (preprocessing: no crop, no normalisation, RGB)
  fixtures/digits/images/*.tif        40 of the digits' test images (4 per class)
  fixtures/digits/labels.csv          their id,label
  fixtures/digits/expected-logits.csv PyTorch's fp32 eval-mode logits for them (id,logit_0..9)

Run: python3 tools/make_digits_fixture.py (needs torch, torchvision, tifffile, safetensors, scikit-learn).
"""
import csv, json, os, subprocess, sys, tempfile

import numpy as np
import tifffile
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from fixture_models import ResNet18

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "digits")
WIDTH, CLASSES, EPOCHS = 16, 10, 6


def load(folder, labels):
    rows = list(csv.DictReader(open(labels)))
    x = np.stack([tifffile.imread(os.path.join(folder, r["id"] + ".tif")) for r in rows]).astype(np.float32) / 255
    return [r["id"] for r in rows], torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.tensor([int(r["label"]) for r in rows])


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "make_digits_set.py"), tmp, "--seed", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        _, train_x, train_y = load(os.path.join(tmp, "train"), os.path.join(tmp, "train_labels.csv"))
        test_ids, test_x, test_y = load(os.path.join(tmp, "test"), os.path.join(tmp, "test_labels.csv"))
        model = ResNet18(WIDTH, CLASSES)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        for epoch in range(EPOCHS):
            model.train()
            order = torch.randperm(len(train_y))
            for start in range(0, len(order), 32):
                index = order[start:start + 32]
                loss = torch.nn.functional.cross_entropy(model(train_x[index]), train_y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, test accuracy {accuracy:.4f}")
        os.makedirs(os.path.join(ROOT, "images"), exist_ok=True)
        compact = dict(sort_keys=True, separators=(",", ":"))
        metadata = {
            "format": "resnetkit-checkpoint/1",
            "config": json.dumps({"numClasses": CLASSES, "head": "linear", "hiddenUnits": 256, "dropout": 0.5,
                                  "baseWidth": WIDTH, "batchNormEpsilon": 1e-5}, **compact),
            "classes": json.dumps([str(k) for k in range(CLASSES)], **compact),
            "preprocessing": json.dumps({"crop": 0, "normalization": "none", "channelOrder": "rgb"}, **compact),
            "provenance": json.dumps({"source": "UCI digits", "sourceSHA256": "", "producer": "tools/make_digits_fixture.py",
                                      "notes": [f"trained {EPOCHS} epochs by PyTorch, test accuracy {accuracy:.4f}"]}, **compact),
        }
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(ROOT, "model.safetensors"),
                  metadata=metadata)
        chosen = [i for k in range(CLASSES) for i in np.flatnonzero(test_y.numpy() == k)[:4]]
        with torch.no_grad():
            logits = model(test_x[chosen]).numpy()
        with open(os.path.join(ROOT, "labels.csv"), "w") as f, open(os.path.join(ROOT, "expected-logits.csv"), "w") as g:
            f.write("id,label\n")
            g.write("id," + ",".join(f"logit_{k}" for k in range(CLASSES)) + "\n")
            for row, i in zip(logits, chosen):
                ident = test_ids[i]
                tifffile.imwrite(os.path.join(ROOT, "images", ident + ".tif"),
                                 tifffile.imread(os.path.join(tmp, "test", ident + ".tif")), photometric="rgb")
                f.write(f"{ident},{int(test_y[i])}\n")
                g.write(ident + "," + ",".join(f"{float(v):.9g}" for v in row) + "\n")


if __name__ == "__main__":
    main()
