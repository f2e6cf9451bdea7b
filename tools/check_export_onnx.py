"""Checks `resnetkit export-onnx` against PyTorch and ONNX Runtime (not run by CI; needs the Python venv).
For a checkpoint (torchvision names, linear `fc` or MLP `head.*`), exports it with resnetkit at each opset given,
validates the file with onnx.checker, and compares ONNX Runtime's logits with PyTorch's eval-mode logits of the
same state dict on random inputs of two sizes (dynamic batch and spatial dims).
Usage: /opt/pyref/bin/python tools/check_export_onnx.py RESNETKIT CKPT [OPSET...]"""
import os, subprocess, sys, tempfile
import numpy as np, onnx, onnxruntime as ort, torch, torch.nn as nn
from safetensors.torch import load_file
from torchvision.models.resnet import ResNet, BasicBlock


def torch_model(state):
    width = state["conv1.weight"].shape[0]
    net = ResNet(BasicBlock, [2, 2, 2, 2])
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False); net.bn1 = nn.BatchNorm2d(width)
    for i, mult in enumerate([1, 2, 4, 8]):
        setattr(net, f"layer{i + 1}", net._make_layer(BasicBlock, mult * width, 2, stride=1 if i == 0 else 2))
    if "fc.weight" in state:
        net.fc = nn.Linear(*reversed(state["fc.weight"].shape))
    else:
        h, k = state["head.fc1.weight"].shape[0], state["head.fc2.weight"].shape[0]
        net.fc = nn.Identity()
        net.head = nn.Sequential()
        net.head.bn1 = nn.BatchNorm1d(8 * width); net.head.fc1 = nn.Linear(8 * width, h)
        net.head.relu = nn.ReLU(); net.head.bn2 = nn.BatchNorm1d(h); net.head.fc2 = nn.Linear(h, k)
        net.head.forward = lambda v: net.head.fc2(net.head.bn2(net.head.relu(net.head.fc1(net.head.bn1(v)))))
        backbone_forward = net.forward
        net.forward = lambda v: net.head(backbone_forward(v))
    net.load_state_dict(state, strict=True)
    return net.eval()


def main():
    binary, ckpt = sys.argv[1], sys.argv[2]
    opsets = [int(o) for o in sys.argv[3:]] or [17]
    net = torch_model(load_file(ckpt))
    torch.manual_seed(0)
    for opset in opsets:
        out = os.path.join(tempfile.mkdtemp(), "model.onnx")
        subprocess.run([binary, "export-onnx", ckpt, "--out", out, "--opset", str(opset), "--quiet"], check=True)
        model = onnx.load(out)
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        for shape in [(3, 3, 64, 64), (2, 3, 49, 49)]:
            x = torch.randn(*shape)
            got = sess.run(["logits"], {"input": x.numpy()})[0]
            with torch.no_grad():
                want = net(x).numpy()
            err = np.abs(got - want).max() / np.abs(want).max()
            print(f"opset {opset} input {list(shape)}: ONNX Runtime vs PyTorch relative error {err:.2e}")
            assert err < 1e-4


if __name__ == "__main__":
    main()
