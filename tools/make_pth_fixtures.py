"""Makes fixtures/pth/: PyTorch checkpoints written by torch.save in the forms users hold, PyTorch's own logits for
each on committed 96x96 and 49x49 inputs, the seed notebook's layout as safetensors and as ONNX, other ResNet
topologies, and hostile pickles (run from the repository root: python3 tools/make_pth_fixtures.py).

Models are ResNet-18s with torchvision's structure at a reduced base width (2 or 4), so each file is tens of KB.
The hostile files would create MARKER if anything executed them; the tests check that it never appears.
"""
import collections
import io
import os
import pickle
import warnings

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from fixture_models import ResNet18, randomise_batchnorm

warnings.filterwarnings("ignore")
OUT = "fixtures/pth"
MARKER = "/tmp/resnetkit-hostile-pickle-ran"


def make_model(width, classes, seed, head="linear", hidden=16):
    torch.manual_seed(seed)
    model = ResNet18(width, classes, head=head, hidden=hidden)
    randomise_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def seed_model(width, classes, seed, hidden=16):
    """The seed notebook's model: nn.Sequential(*list(resnet18.children())[:-2], head)."""
    torch.manual_seed(seed)
    backbone = ResNet18(width, classes)
    features = 8 * width
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(features), nn.Dropout(0.5),
                         nn.Linear(features, hidden), nn.ReLU(), nn.BatchNorm1d(hidden), nn.Dropout(0.5),
                         nn.Linear(hidden, classes))
    model = nn.Sequential(*list(backbone.children())[:-2], head)
    randomise_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


class PreActBlock(nn.Module):
    """A pre-activation (ResNet v2) block with torchvision-like names: bn1 normalises the block's input."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for stage, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if stage == 0 else 2
            setattr(self, f"layer{stage + 1}", nn.Sequential(PreActBlock(inplanes, planes, stride),
                                                              PreActBlock(planes, planes, 1)))
            inplanes = planes
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def save_f32(name, array):
    np.ascontiguousarray(array, dtype="<f4").tofile(os.path.join(OUT, name))


def save_logits(name, model, inputs):
    """PyTorch's logits at both sizes: <name>.logits96.f32 and <name>.logits49.f32."""
    with torch.no_grad():
        for side, x in inputs.items():
            save_f32(f"{name}.logits{side}.f32", model(x).float().numpy())


class Hostile:
    """Its __reduce__ makes unpickling call `function(*args)`."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def seed_matmul_onnx(source, target):
    """The TorchScript export with each Gemm written as MatMul(x, Wᵀ) + Add(b), as other exporters write Linear."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(source)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        x, w, b = node.input
        weight = numpy_helper.to_array(inits[w])
        graph.initializer.remove(inits[w])
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), w + "_t"))
        product = node.output[0] + "_matmul"
        nodes.append(helper.make_node("MatMul", [x, w + "_t"], [product], name=node.name + "_MatMul"))
        nodes.append(helper.make_node("Add", [product, b], [node.output[0]], name=node.name + "_Add"))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, target)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(1234)
    inputs = {96: torch.randn(2, 3, 96, 96), 49: torch.randn(2, 3, 49, 49)}
    save_f32("input_2x3x96x96.f32", inputs[96].numpy())
    save_f32("input_2x3x49x49.f32", inputs[49].numpy())
    path = lambda name: os.path.join(OUT, name)

    # torchvision names, linear head, base width 4 (the zip format torch.save writes since 1.6).
    model = make_model(4, 5, seed=0)
    torch.save(model.state_dict(), path("zip_state_dict.pth"))
    save_logits("width4", model, inputs)

    # The rest at base width 2.
    small = make_model(2, 3, seed=10)
    save_logits("width2", small, inputs)
    sd = {k: v.clone() for k, v in small.state_dict().items()}  # a copy: the optimizer step below moves the weights
    torch.save(sd, path("legacy_state_dict.pth"), _use_new_zipfile_serialization=False)
    optimizer = torch.optim.SGD(small.parameters(), lr=1e-3, momentum=0.9)
    small(torch.randn(2, 3, 49, 49)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():  # the step moved the weights: restore the ones the logits were computed with
        small.load_state_dict(sd)
    checkpoint = {"epoch": 7, "model_state_dict": small.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                  "loss": 0.4321, "best_acc": np.float64(0.9), "classes": ["benign", "tumor", "other"]}
    torch.save(checkpoint, path("checkpoint.tar"))
    tiny = nn.Linear(2, 2)
    tiny_optimizer = torch.optim.AdamW(tiny.parameters())
    tiny(torch.ones(1, 2)).sum().backward()
    tiny_optimizer.step()
    torch.save({"epoch": 7, "optimizer_state_dict": tiny_optimizer.state_dict()}, path("bad_optimizer_only.pth"))
    torch.save(tiny_optimizer.state_dict(), path("bad_optimizer_state.pth"))
    torch.save(small, path("whole_module.pt"))
    torch.save(small, path("whole_module_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(nn.DataParallel(small).state_dict(), path("dataparallel.pth"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path("nested_state_dict_module.pth"))

    # Other storage dtypes: the logits are those of the model with its weights rounded through that dtype.
    for dtype, name in [(torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float64, "fp64")]:
        converted = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
        torch.save(converted, path(f"{name}.pth"))
        rounded = make_model(2, 3, seed=10)
        rounded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in converted.items()})
        save_logits(name, rounded, inputs)

    # Pickle protocol 4 (FRAME, STACK_GLOBAL, MEMOIZE), and a tensor with a Python attribute, which torch.save
    # writes through torch._tensor._rebuild_from_type_v2.
    torch.save(sd, path("protocol4.pth"), pickle_protocol=4)
    tagged = dict(sd)
    tagged["fc.bias"] = sd["fc.bias"].clone()
    tagged["fc.bias"].note = "an attribute"
    torch.save(tagged, path("rebuild_from_type.pth"))

    # Views: every float tensor a slice of one shared storage (offsets), fc.weight a transposed view (strides).
    names = [k for k, v in sd.items() if v.is_floating_point()]
    flat = torch.cat([sd[k].flatten() for k in names])
    views, offset = {}, 0
    for k in names:
        n = sd[k].numel()
        views[k] = flat[offset:offset + n].view(sd[k].shape)
        offset += n
    views.update({k: v for k, v in sd.items() if not v.is_floating_point()})
    fc_t = sd["fc.weight"].t().contiguous()
    views["fc.weight"] = fc_t.t()
    assert not views["fc.weight"].is_contiguous()
    torch.save(views, path("views_shared_storage.pth"))
    torch.save(views, path("views_shared_storage_legacy.pth"), _use_new_zipfile_serialization=False)

    # The seed notebook's Sequential with the MLP head (base width 2, hidden 8, 2 classes).
    seed = seed_model(2, 2, seed=20, hidden=8)
    save_logits("seed", seed, inputs)
    torch.save(seed.state_dict(), path("seed_sequential.pth"))
    torch.save(seed, path("seed_whole_module.pt"))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in seed.state_dict().items()}, path("seed_sequential.safetensors"))
    with torch.no_grad():
        torch.onnx.export(seed, (inputs[49],), path("seed_torchscript.onnx"), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch"}})
        program = torch.onnx.export(seed, (inputs[49],), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
        program.save(path("seed_dynamo.onnx"), external_data=False)
    seed_matmul_onnx(path("seed_torchscript.onnx"), path("seed_matmul.onnx"))

    # Other topologies: pre-activation blocks, an input BatchNorm, ResNet-50 / ResNet-34 keys.
    preact = PreActResNet18(2, 3).eval()
    randomise_batchnorm(preact, torch.Generator().manual_seed(3))
    torch.save(preact.state_dict(), path("bad_preactivation.pth"))
    input_bn = seed_model(2, 2, seed=30)
    input_bn = nn.Sequential(nn.BatchNorm2d(3), *input_bn.children()).eval()
    torch.save(input_bn.state_dict(), path("bad_input_batchnorm.pth"))
    with torch.no_grad():
        for net, name in [(preact, "bad_preactivation.onnx"), (input_bn, "bad_input_batchnorm.onnx")]:
            torch.onnx.export(net, (inputs[49],), path(name), dynamo=False, input_names=["input"],
                              output_names=["logits"], training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False)
    from torchvision.models import resnet34, resnet50
    for builder, name in [(resnet50, "bad_resnet50.pth"), (resnet34, "bad_resnet34.pth")]:
        keys = builder().state_dict().keys()  # names only: one value per tensor keeps the file small
        one = torch.zeros(1)  # one shared storage
        torch.save({k: one for k in keys}, path(name))

    # Hostile pickles: each would create MARKER (or run code) when loaded by pickle.
    command = f"touch {MARKER}"
    import builtins
    import os as os_module
    import subprocess
    hostile = {
        "hostile_os_system.pth": Hostile(os_module.system, (command,)),
        "hostile_eval.pth": Hostile(builtins.eval, (f"__import__('os').system('{command}')",)),
        "hostile_popen.pth": Hostile(subprocess.Popen, (["touch", MARKER],)),
        "hostile_exec.pth": Hostile(builtins.exec, (f"import os; os.system('{command}')",)),
    }
    for name, payload in hostile.items():
        torch.save({"conv1.weight": payload, "fc.bias": torch.zeros(2)}, path(name))
    # The same payload in the legacy format, inside a state dict next to real tensors.
    legacy = dict(sd)
    legacy["fc.bias"] = Hostile(os_module.system, (command,))
    torch.save(legacy, path("hostile_legacy_os_system.pth"), _use_new_zipfile_serialization=False)
    # A bare pickle (no torch at all) at protocol 4 calling posix.system.
    with open(path("hostile_plain_pickle.pkl"), "wb") as f:
        pickle.dump(collections.OrderedDict(x=Hostile(os_module.system, (command,))), f, protocol=4)
    assert not os.path.exists(MARKER)


if __name__ == "__main__":
    main()
