"""Loads a checkpoint imported from ONNX into torchvision's ResNet-18 with load_state_dict(strict=True) and
compares its eval-mode logits with ONNX Runtime's on the source ONNX file (not run by CI; needs the venv).
Full-width checkpoints use torchvision.models.resnet18(num_classes=K); reduced-width ones (test fixtures) the
same torchvision classes at that width.
Usage: /opt/pyref/bin/python tools/check_torch_load.py SOURCE.onnx IMPORTED.safetensors"""
import sys
import numpy as np, onnxruntime as ort, torch, torch.nn as nn, torchvision
from safetensors.torch import load_file
from torchvision.models.resnet import ResNet, BasicBlock


def resnet18(width, classes):
    if width == 64:
        return torchvision.models.resnet18(num_classes=classes)
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=classes)
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False); net.bn1 = nn.BatchNorm2d(width)
    for i, mult in enumerate([1, 2, 4, 8]):
        setattr(net, f"layer{i + 1}", net._make_layer(BasicBlock, mult * width, 2, stride=1 if i == 0 else 2))
    net.fc = nn.Linear(8 * width, classes)
    return net


def main():
    source, checkpoint = sys.argv[1], sys.argv[2]
    state = load_file(checkpoint)
    net = resnet18(state["conv1.weight"].shape[0], state["fc.weight"].shape[0])
    net.load_state_dict(state, strict=True)
    net.eval()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else None for d in inp.shape]
    torch.manual_seed(0)
    x = torch.randn(dims[0] or 3, 3, dims[2] or 96, dims[3] or 96)
    want = sess.run(None, {inp.name: x.numpy()})[0]
    with torch.no_grad():
        got = net(x).numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"{checkpoint}: strict load OK; PyTorch vs ONNX Runtime relative error {err:.2e} on {list(x.shape)}")
    assert err < 1e-4


if __name__ == "__main__":
    main()
