#!/usr/bin/env python3
"""A copy of a torchvision-named ResNet-18 safetensors file with a new, seeded 2-class head (fc), as a user's
fine-tuned pathology model has: for benchmarks whose cost depends on the number of classes (batch-infer writes
every logit). Reads and writes safetensors with numpy alone (no torch, no safetensors package).

Usage: tools/two_class_head.py IN.safetensors OUT.safetensors
"""
import json, struct, sys
import numpy as np

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}

def read(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    metadata = header.pop("__metadata__", None)
    tensors = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return tensors, metadata

def write(path, tensors, metadata):
    header, offset, blobs = {}, 0, []
    if metadata: header["__metadata__"] = metadata
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": NAMES[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))

def main():
    source, target = sys.argv[1:3]
    tensors, metadata = read(source)
    features = tensors["fc.weight"].shape[1]
    rng = np.random.default_rng(0)
    tensors["fc.weight"] = (rng.standard_normal((2, features)) * 0.05).astype(np.float32)
    tensors["fc.bias"] = np.zeros(2, np.float32)
    write(target, tensors, metadata)

if __name__ == "__main__":
    main()
