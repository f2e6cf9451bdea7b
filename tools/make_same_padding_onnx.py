"""Makes fixtures/keras3/same_pads96.onnx: the Keras 3 'same'-padded ResNet-18 (fixtures/keras3/same.keras) as a
converter from Keras writes it for a fixed 96x96 input, with TensorFlow's asymmetric padding as explicit `pads`
([0, 0, 1, 1] at stride 2) instead of auto_pad. Made from `resnetkit export-onnx` (which writes auto_pad =
SAME_UPPER): checks with ONNX Runtime that both graphs compute Keras' logits, then rewrites the pads.
Run from the repository root after `swift build -c release`: python3 tools/make_same_padding_onnx.py
"""
import os
import subprocess
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, shape_inference

KERAS = "fixtures/keras3"
INPUTS = "fixtures/pth"
RESNETKIT = ".build/release/resnetkit"


def same_pads(size, kernel, stride):
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def logits(path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def main():
    work = tempfile.mkdtemp()
    checkpoint, exported = os.path.join(work, "same.safetensors"), os.path.join(work, "same.onnx")
    subprocess.run([RESNETKIT, "import-weights", f"{KERAS}/same.keras", "--out", checkpoint, "--quiet"], check=True)
    subprocess.run([RESNETKIT, "export-onnx", checkpoint, "--out", exported], check=True)
    x = {side: np.fromfile(f"{INPUTS}/input_2x3x{side}x{side}.f32", dtype="<f4").reshape(2, 3, side, side) for side in (96, 49)}
    for side in (96, 49):
        want = np.fromfile(f"{KERAS}/same.logits{side}.f32", dtype="<f4").reshape(2, -1)
        err = np.abs(logits(exported, x[side]) - want).max() / np.abs(want).max()
        print(f"export-onnx (auto_pad SAME_UPPER) vs Keras at {side}x{side}: {err:.2e}")
        assert err < 1e-4

    model = onnx.load(exported)
    graph = model.graph
    for d, value in zip(graph.input[0].type.tensor_type.shape.dim, [2, 3, 96, 96]):
        d.ClearField("dim_param")
        d.dim_value = value
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in
              list(inferred.graph.value_info) + list(inferred.graph.input)}
    for node in graph.node:
        auto = [a for a in node.attribute if a.name == "auto_pad"]
        if not auto:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = attrs["kernel_shape"][0]
        stride = attrs.get("strides", [1, 1])[0]
        _, _, height, width = shapes[node.input[0]]
        (top, bottom), (left, right) = same_pads(height, kernel, stride), same_pads(width, kernel, stride)
        node.attribute.remove(auto[0])
        node.attribute.append(helper.make_attribute("pads", [top, left, bottom, right]))
    out = f"{KERAS}/same_pads96.onnx"
    onnx.save(model, out)
    want = np.fromfile(f"{KERAS}/same.logits96.f32", dtype="<f4").reshape(2, -1)
    err = np.abs(logits(out, x[96]) - want).max() / np.abs(want).max()
    print(f"{out} (explicit pads) vs Keras at 96x96: {err:.2e}")
    assert err < 1e-4


if __name__ == "__main__":
    main()
