"""The Python alternative to `resnetkit batch-infer`, for tools/bench_batch_infer.sh, plus its helpers.

  generate DIR N            N PCam-like 96x96 RGB 8-bit uncompressed TIFFs with hex ids
  export CKPT ONNX          torchvision resnet18 from a safetensors state dict → ONNX (dynamic batch and size)
  run DIR ONNX OUT [--crop N] [--batch-size 64] [--threads 2]
                            tifffile decode + centre crop + ImageNet normalisation + ONNX Runtime + csv writer

Needs /opt/pyref/bin/python (tifffile, onnxruntime; torch/torchvision/safetensors for `export`).
"""
import argparse
import csv
import hashlib
import os
import sys

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 1, 3)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 1, 3)


def generate(directory, count, seed=1):
    import tifffile
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:96]
    # A few textures recombined with noise: enough variety for decoding and inference costs to be realistic.
    bases = []
    for _ in range(16):
        image = np.broadcast_to(np.array([rng.uniform(180, 240), rng.uniform(120, 190), rng.uniform(170, 230)]), (96, 96, 3)).copy()
        for _ in range(20):
            cy, cx, r = rng.uniform(0, 96), rng.uniform(0, 96), rng.uniform(2, 9)
            image -= np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(20, 140, 3)
        bases.append(image)
    for i in range(count):
        noise = rng.normal(0, 8, (96, 96, 3))
        pixels = np.clip(bases[i % len(bases)] + noise, 0, 255).astype(np.uint8)
        ident = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()
        tifffile.imwrite(os.path.join(directory, ident + ".tif"), pixels, photometric="rgb")


def export(checkpoint, onnx_path):
    import torch
    import torchvision
    from safetensors.torch import load_file
    state = load_file(checkpoint)
    model = torchvision.models.resnet18(num_classes=state["fc.weight"].shape[0])
    model.load_state_dict(state)
    torch.onnx.export(model.eval(), torch.zeros(1, 3, 96, 96), onnx_path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})


def crop_offset(side, crop):
    return int(round((side - crop) / 2.0))  # torchvision's CenterCrop


def run(directory, onnx_path, out, crop, batch_size, threads):
    import onnxruntime as ort
    import tifffile
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith((".tif", ".tiff")))
    with open(out, "w", newline="") as f:
        writer = None
        for start in range(0, len(names), batch_size):
            chunk = names[start:start + batch_size]
            batch = []
            for name in chunk:
                x = tifffile.imread(os.path.join(directory, name)).astype(np.float32) / 255
                if crop:
                    top, left = crop_offset(x.shape[0], crop), crop_offset(x.shape[1], crop)
                    x = x[top:top + crop, left:left + crop]
                batch.append(((x - MEAN) / STD).transpose(2, 0, 1))
            logits = session.run(None, {"input": np.ascontiguousarray(np.stack(batch))})[0]
            if writer is None:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["id"] + [f"logit_{k}" for k in range(logits.shape[1])] + ["label"])
            for name, row in zip(chunk, logits):
                writer.writerow([os.path.splitext(name)[0]] + [f"{v:.9g}" for v in row] + [int(row.argmax())])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("generate")
    g.add_argument("directory")
    g.add_argument("count", type=int)
    e = commands.add_parser("export")
    e.add_argument("checkpoint")
    e.add_argument("onnx")
    r = commands.add_parser("run")
    r.add_argument("directory")
    r.add_argument("onnx")
    r.add_argument("out")
    r.add_argument("--crop", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.directory, args.count)
    elif args.command == "export":
        export(args.checkpoint, args.onnx)
    else:
        run(args.directory, args.onnx, args.out, args.crop, args.batch_size, args.threads)


if __name__ == "__main__":
    sys.exit(main())
