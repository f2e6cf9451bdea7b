"""Makes fixtures/onnx/: small ResNet-18 ONNX exports in the variants real files come in, ONNX Runtime's
logits for each on a committed input, bad files, and the folded-BatchNorm calibration fixture.
Run: /opt/pyref/bin/python tools/make_onnx_fixtures.py   (see fixtures/onnx/README.md)"""
import os, sys, warnings
import numpy as np
import onnx, onnxruntime as ort, torch, torch.nn as nn
from onnx import helper, numpy_helper, TensorProto
from safetensors.numpy import save_file
from torchvision.models.resnet import ResNet, BasicBlock, Bottleneck

warnings.filterwarnings("ignore")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "onnx")
os.makedirs(OUT, exist_ok=True)


def resnet18(width, classes, seed, blocks=(2, 2, 2, 2)):
    """torchvision's ResNet-18 (or another BasicBlock ResNet) at a reduced base width, BatchNorm statistics
    made non-trivial."""
    torch.manual_seed(seed)
    net = ResNet(BasicBlock, list(blocks), num_classes=classes)
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(BasicBlock, width, blocks[0])
    net.layer2 = net._make_layer(BasicBlock, 2 * width, blocks[1], stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, blocks[2], stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, blocks[3], stride=2)
    net.fc = nn.Linear(8 * width, classes)
    randomize_bn(net)
    return net.eval()


def randomize_bn(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n) + 0.5)
                m.bias.copy_(0.1 * torch.randn(n))
                m.running_mean.copy_(0.1 * torch.randn(n))
                m.running_var.copy_(torch.rand(n) + 0.5)
                m.num_batches_tracked.fill_(1000)


def export(net, path, x, **kw):
    dyn = {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
    torch.onnx.export(net, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes=kw.pop("dynamic_axes", dyn), **kw)


def ort_logits(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].astype(np.float32)


def write_f32(name, array):
    np.ascontiguousarray(array, dtype="<f4").tofile(os.path.join(OUT, name))


def fixture(name, path, x, net=None):
    logits = ort_logits(path, x)
    assert np.isfinite(logits).all() and np.abs(logits).max() > 0
    if net is not None:  # the export itself must agree with PyTorch
        with torch.no_grad():
            assert np.abs(net(x).numpy() - logits).max() < 1e-4 * np.abs(logits).max()
    write_f32(name + ".logits.f32", logits)
    print(f"{name}: logits {list(logits.shape)}")


# 10. A "pretrained" folded model: ts_folded.onnx's original (ts_folded_original.safetensors, same weights and BN
#     affine parameters) with every BatchNorm's running statistics set to the statistics of its input over a
#     calibration batch X2, as a trained model's describe its data (momentum 1.0, one train-mode forward on X2 under
#     no_grad; PyTorch stores the mean and the UNBIASED variance). Exported folded like ts_folded.onnx; references are
#     the ORIGINAL's train-mode logits/loss on X2 and its train-mode loss after one AdamW step. Self-contained: reads
#     only ts_folded_original.safetensors and writes only new files; run alone with
#     `/opt/pyref/bin/python tools/make_onnx_fixtures.py pretrained` (the full run also calls it, last).
def make_pretrained():
    from safetensors.numpy import load_file
    net = resnet18(8, 5, seed=1)
    state = load_file(os.path.join(OUT, "ts_folded_original.safetensors"))
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    # X2: 8 smooth RGB images in [0, 1] (8x8 noise upsampled + fine noise), ImageNet-normalised.
    g = torch.Generator().manual_seed(2024)
    coarse = torch.rand(8, 3, 8, 8, generator=g)
    img = nn.functional.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    img = (img + 0.1 * torch.randn(8, 3, 64, 64, generator=g)).clamp(0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x2 = ((img - mean) / std).contiguous()
    y2 = torch.randint(0, 5, (8,), generator=g)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns: bn.momentum = 1.0
        net.train()(x2)
        for bn in bns: bn.momentum = 0.1; bn.num_batches_tracked.fill_(1000)
    net.eval()
    save_file({k: v.numpy() for k, v in net.state_dict().items()}, os.path.join(OUT, "ts_folded_pretrained_original.safetensors"))
    write_f32("calib_pretrained_8x3x64x64.f32", x2.numpy())
    p = os.path.join(OUT, "ts_folded_pretrained.onnx")
    export(net, p, x2, opset_version=17)
    model = onnx.load(p)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    eval_logits = ort_logits(p, x2)
    with torch.no_grad():
        assert np.abs(net(x2).numpy() - eval_logits).max() < 1e-4 * np.abs(eval_logits).max()
    # The original in train mode, one AdamW step, train mode again (fresh copy so the running statistics saved
    # above are not touched by the references).
    orig = resnet18(8, 5, seed=1)
    orig.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in load_file(
        os.path.join(OUT, "ts_folded_pretrained_original.safetensors")).items()})
    orig.train()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(orig.parameters(), lr=1e-3, weight_decay=0.01)
    logits = orig(x2)
    loss = loss_fn(logits, y2)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_fn(orig(x2), y2)
    train_logits = logits.detach().numpy()
    expected = {"labels": y2.numpy().astype(np.int64), "train/original/logits": train_logits,
                "train/original/loss": loss.detach().numpy().reshape(1), "step/original/loss": after.numpy().reshape(1),
                "eval/folded/logits": eval_logits}
    save_file(expected, os.path.join(OUT, "pretrained_expected.safetensors"))
    rel = np.abs(train_logits - eval_logits).max() / np.abs(train_logits).max()
    print(f"pretrained: original train vs folded eval logits rel. {rel:.3g}; loss {float(loss):.6f} -> {float(after):.6f}"
          f" after one step; labels {y2.tolist()}")


if __name__ == "__main__" and sys.argv[1:] == ["pretrained"]:
    make_pretrained()
    sys.exit(0)


torch.manual_seed(1234)
x = torch.rand(2, 3, 64, 64) * 2 - 1
write_f32("input_2x3x64x64.f32", x.numpy())

# 1. TorchScript exporter, eval mode: BatchNorm folded into Conv (base width 8, 5 classes, opset 17).
folded_net = resnet18(8, 5, seed=1)
p = os.path.join(OUT, "ts_folded.onnx")
export(folded_net, p, x, opset_version=17)
fixture("ts_folded", p, x, folded_net)

# 2. TorchScript exporter, BatchNormalization kept (training=PRESERVE, no constant folding), opset 11.
net = resnet18(4, 3, seed=2)
p = os.path.join(OUT, "ts_unfolded.onnx")
export(net, p, x, opset_version=11, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
assert any(n.op_type == "BatchNormalization" for n in onnx.load(p).graph.node)
fixture("ts_unfolded", p, x, net)

# 3. Dynamo exporter, weights as external data beside the model.
net = resnet18(4, 7, seed=3)
p = os.path.join(OUT, "dynamo.onnx")
for stale in (p, p + ".data"):
    if os.path.exists(stale): os.remove(stale)
program = torch.onnx.export(net, (x,), dynamo=True, input_names=["input"], output_names=["logits"])
program.save(p, external_data=True)
model = onnx.load(p, load_external_data=False)
assert any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
fixture("dynamo", p, x, net)

# 4. Opset 9, static batch, weights in typed fields: float_data, Constant nodes, float16 (int32_data) and
#    float64 (double_data) behind Cast nodes.
net = resnet18(4, 4, seed=4)
p = os.path.join(OUT, "opset9_typed.onnx")
export(net, p, x, opset_version=9, dynamic_axes={})
model = onnx.load(p)
g = model.graph
inits = list(g.initializer)
del g.initializer[:]
new_nodes = []
for i, t in enumerate(inits):
    a = numpy_helper.to_array(t)
    if a.dtype != np.float32:
        g.initializer.append(t); continue
    kind = i % 4
    if kind == 0:    # float_data instead of raw_data
        g.initializer.append(helper.make_tensor(t.name, TensorProto.FLOAT, a.shape, a.flatten().tolist()))
    elif kind == 1:  # a Constant node
        new_nodes.append(helper.make_node("Constant", [], [t.name], name=f"const_{i}", value=numpy_helper.from_array(a, t.name)))
    elif kind == 2:  # float16 in int32_data, cast to float
        h = a.astype(np.float16)
        ht = helper.make_tensor(t.name + "_f16", TensorProto.FLOAT16, a.shape, h.astype(np.float32).flatten().tolist())
        assert len(ht.int32_data) == a.size and not ht.raw_data  # the helper stores the half bits in int32_data
        g.initializer.append(ht)
        new_nodes.append(helper.make_node("Cast", [t.name + "_f16"], [t.name], name=f"cast_{i}", to=TensorProto.FLOAT))
    else:            # float64 in double_data, cast to float
        d = a.astype(np.float64)
        g.initializer.append(helper.make_tensor(t.name + "_f64", TensorProto.DOUBLE, a.shape, d.flatten().tolist()))
        new_nodes.append(helper.make_node("Cast", [t.name + "_f64"], [t.name], name=f"cast_{i}", to=TensorProto.FLOAT))
nodes = new_nodes + list(g.node)
del g.node[:]
g.node.extend(nodes)
onnx.checker.check_model(model)
onnx.save(model, p)
fixture("opset9_typed", p, x)

# 5. The ONNX model zoo's MXNet-derived naming (resnetv15_*): BatchNormalization nodes, explicit pads,
#    input `data`, static batch; every node, initializer and value renamed.
net = resnet18(4, 6, seed=5)
p = os.path.join(OUT, "mxnet_style.onnx")
export(net, p, x, opset_version=9, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
       dynamic_axes={})
model = onnx.load(p)
g = model.graph
rename, counters = {"input": "data"}, {}
def fresh(kind):
    counters[kind] = counters.get(kind, -1) + 1
    return f"resnetv15_{kind}{counters[kind]}"
for n in g.node:
    kind = {"Conv": "conv", "BatchNormalization": "batchnorm", "Relu": "relu", "MaxPool": "pool", "Add": "plus",
            "GlobalAveragePool": "pool", "Flatten": "flatten", "Gemm": "dense"}.get(n.op_type, n.op_type.lower())
    base = fresh(kind)
    n.name = base
    for j, o in enumerate(n.output):
        rename[o] = base + ("_fwd" if j == 0 else f"_out{j}")
    for j, i in enumerate(n.input):
        if j > 0 and i not in rename:
            suffix = {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"}[j] if n.op_type != "Conv" else ["", "weight", "bias"][j]
            rename[i] = f"{base}_{'gamma' if n.op_type == 'BatchNormalization' and j == 1 else 'beta' if n.op_type == 'BatchNormalization' and j == 2 else suffix}"
for n in g.node:
    n.input[:] = [rename.get(i, i) for i in n.input]
    n.output[:] = [rename.get(o, o) for o in n.output]
for t in g.initializer: t.name = rename.get(t.name, t.name)
for v in list(g.input) + list(g.output) + list(g.value_info): v.name = rename.get(v.name, v.name)
model.producer_name, model.producer_version = "MXNet-style fixture", "1.0"
onnx.checker.check_model(model)
onnx.save(model, p)
fixture("mxnet_style", p, x, net)

# 6. Other heads: ReduceMean (axes attribute) instead of GlobalAveragePool, an Identity, and MatMul + Add
#    instead of Gemm (on ts_unfolded's weights, so its logits apply).
model = onnx.load(os.path.join(OUT, "ts_unfolded.onnx"))
g = model.graph
nodes = []
for n in g.node:
    if n.op_type == "GlobalAveragePool":
        nodes.append(helper.make_node("ReduceMean", list(n.input), [n.output[0] + "_pre"], name="pool_mean", axes=[2, 3], keepdims=1))
        nodes.append(helper.make_node("Identity", [n.output[0] + "_pre"], list(n.output), name="pool_identity"))
    elif n.op_type == "Gemm":
        w = {t.name: t for t in g.initializer}[n.input[1]]
        g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), "fc_weight_t"))
        nodes.append(helper.make_node("MatMul", [n.input[0], "fc_weight_t"], ["fc_matmul"], name="fc_matmul"))
        nodes.append(helper.make_node("Add", ["fc_matmul", n.input[2]], list(n.output), name="fc_add"))
    else:
        nodes.append(n)
del g.node[:]
g.node.extend(nodes)
weights = [t for t in g.initializer if t.name == "fc.weight"]
g.initializer.remove(weights[0])
onnx.checker.check_model(model)
p = os.path.join(OUT, "head_variants.onnx")
onnx.save(model, p)
fixture("head_variants", p, x)

# 7. Bad files.
class Bottlenecks(nn.Module):  # a ResNet-50-like stem and bottleneck blocks at width 4
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False); self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(); self.maxpool = nn.MaxPool2d(3, 2, 1)
        down = nn.Sequential(nn.Conv2d(4, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(Bottleneck(4, 4, downsample=down), Bottleneck(16, 4))
        self.avgpool = nn.AdaptiveAvgPool2d(1); self.fc = nn.Linear(16, 2)
    def forward(self, v):
        v = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(v)))))
        return self.fc(torch.flatten(self.avgpool(v), 1))
export(Bottlenecks().eval(), os.path.join(OUT, "bad_bottleneck.onnx"), x, opset_version=17)

class TinyMobileNet(nn.Module):  # MobileNet-style stem: 3x3/2 conv, ReLU6, depthwise conv
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU6(), nn.Conv2d(8, 8, 3, 1, 1, groups=8),
                                      nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    def forward(self, v): return self.features(v)
export(TinyMobileNet().eval(), os.path.join(OUT, "bad_mobilenet.onnx"), x, opset_version=17)

export(resnet18(2, 2, seed=6, blocks=(3, 4, 6, 3)), os.path.join(OUT, "bad_resnet34.onnx"), x, opset_version=17)

p = os.path.join(OUT, "bad_softmax.onnx")  # a Softmax after the classifier (width 2)
export(nn.Sequential(resnet18(2, 2, seed=7), nn.Softmax(dim=1)).eval(), p, x, opset_version=17)
print("softmax node:", [n.name for n in onnx.load(p).graph.node if n.op_type == "Softmax"])

model = onnx.load(os.path.join(OUT, "ts_unfolded.onnx"))  # one ReLU replaced by LeakyRelu
relu = [n for n in model.graph.node if n.op_type == "Relu"][3]
relu.op_type = "LeakyRelu"
onnx.save(model, os.path.join(OUT, "bad_unsupported_op.onnx"))
print("unsupported node:", relu.name)

model = onnx.load(os.path.join(OUT, "ts_unfolded.onnx"))  # a tensor declaring more values than it holds
t = [t for t in model.graph.initializer if len(t.dims) == 4][1]
t.raw_data = t.raw_data[: len(t.raw_data) // 2]
onnx.save(model, os.path.join(OUT, "bad_short_tensor.onnx"))
print("short tensor:", t.name, list(t.dims))

model = onnx.load(os.path.join(OUT, "dynamo.onnx"), load_external_data=False)  # external data outside the folder
for t in model.graph.initializer:
    for e in t.external_data:
        if e.key == "location": e.value = "../escape.data"
onnx.save(model, os.path.join(OUT, "bad_external_escape.onnx"))

# 8. Folded BatchNorm rebuilt from calibration statistics (the importer's calibration), for ts_folded.onnx:
#    the original (unfolded) state dict, a calibration batch, the expected per-BN statistics (mean and
#    biased variance of each folded conv's output z = W'x on the batch, as BatchNorm's train mode computes
#    them) and PyTorch's train-mode logits/loss of the original and of the rebuilt model.
save_file({k: v.numpy() for k, v in folded_net.state_dict().items()}, os.path.join(OUT, "ts_folded_original.safetensors"))
torch.manual_seed(99)
calib = torch.rand(4, 3, 64, 64) * 2 - 1
labels = torch.tensor([0, 3, 1, 4])
write_f32("calib_4x3x64x64.f32", calib.numpy())
model = onnx.load(os.path.join(OUT, "ts_folded.onnx"))
inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
rebuilt = resnet18(8, 5, seed=1)
convs = [n for n in model.graph.node if n.op_type == "Conv"]
pairs = [(m, bn) for name, m in rebuilt.named_modules() if isinstance(m, nn.Conv2d)
         for bn in [dict(rebuilt.named_modules())[name.replace("conv", "bn") if "conv" in name else name[:-1] + "1"]]]
assert len(pairs) == len(convs)
stats, eps = {}, 1e-5
outputs = {}
hooks = [conv.register_forward_hook(lambda mod, inp, out, c=conv: outputs.__setitem__(c, out)) for conv, _ in pairs]
with torch.no_grad():
    for (conv, bn), node in zip(pairs, convs):
        conv.weight.copy_(torch.from_numpy(inits[node.input[1]]))
        bn.weight.fill_(1); bn.bias.copy_(torch.from_numpy(inits[node.input[2]])); bn.running_mean.zero_(); bn.running_var.fill_(1 - eps)
    rebuilt.eval()(calib)  # eval forward = the folded network: collect z = W'x
    names = {id(m): n for n, m in rebuilt.named_modules()}
    for conv, bn in pairs:
        z = outputs[conv]
        mean, var = z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3), unbiased=False)
        stats[names[id(bn)] + ".running_mean"], stats[names[id(bn)] + ".running_var"] = mean.numpy(), var.numpy()
        bn.weight.copy_(torch.sqrt(var + eps)); bn.bias.add_(mean)
        bn.running_mean.copy_(mean); bn.running_var.copy_(var)
for h in hooks: h.remove()
# Snapshot before the train-mode forward below moves the running statistics.
# (conv weights are the file's W' as they are: left out to keep the fixture small)
rebuilt_state = {"rebuilt/" + k: v.numpy().copy() for k, v in rebuilt.state_dict().items()
                 if "num_batches" not in k and not ("conv" in k or "downsample.0" in k)}
loss_fn = nn.CrossEntropyLoss()
def train_forward(net):
    net.train()
    logits = net(calib)
    return logits.detach().numpy(), loss_fn(logits, labels).detach().numpy().reshape(1)
orig_logits, orig_loss = train_forward(resnet18(8, 5, seed=1))
rebuilt_logits, rebuilt_loss = train_forward(rebuilt)
with torch.no_grad():
    eval_logits = ort_logits(os.path.join(OUT, "ts_folded.onnx"), calib)
print("rebuilt train-mode vs folded eval logits:", np.abs(rebuilt_logits - eval_logits).max())
save_file({**stats, **rebuilt_state, "labels": labels.numpy().astype(np.int64), "train/original/logits": orig_logits,
           "train/original/loss": orig_loss, "train/rebuilt/logits": rebuilt_logits, "train/rebuilt/loss": rebuilt_loss,
           "eval/folded/logits": eval_logits}, os.path.join(OUT, "calibration_expected.safetensors"))
# 9. One AdamW step (lr 1e-3, weight decay 0.01, PyTorch defaults otherwise) in train mode on the calibration batch
#    with `labels`, from the original, the rebuilt and a naive rebuild (running_mean 0, running_var 1, weight 1,
#    bias b'); the train-mode loss after the step is added to calibration_expected.safetensors as step/<model>/loss
#    (existing tensors are kept as they are). Self-contained: reads only files written above.
def add_step_losses():
    from safetensors.numpy import load_file
    path = os.path.join(OUT, "calibration_expected.safetensors")
    expected = load_file(path)
    x = torch.from_numpy(np.fromfile(os.path.join(OUT, "calib_4x3x64x64.f32"), dtype=np.float32).reshape(4, 3, 64, 64))
    y = torch.from_numpy(expected["labels"])
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(os.path.join(OUT, "ts_folded.onnx")).graph.initializer}
    convs = [n for n in onnx.load(os.path.join(OUT, "ts_folded.onnx")).graph.node if n.op_type == "Conv"]

    def original():
        net = resnet18(8, 5, seed=1)
        state = load_file(os.path.join(OUT, "ts_folded_original.safetensors"))
        net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        return net

    def folded(naive):
        net = resnet18(8, 5, seed=1)
        modules = dict(net.named_modules())
        pairs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for (name, conv), node in zip(pairs, convs):
                bn_name = name.replace("conv", "bn") if "conv" in name else name[:-1] + "1"
                bn = modules[bn_name]
                conv.weight.copy_(torch.from_numpy(inits[node.input[1]].copy()))
                if naive:
                    bn.weight.fill_(1); bn.bias.copy_(torch.from_numpy(inits[node.input[2]].copy()))
                    bn.running_mean.zero_(); bn.running_var.fill_(1)
                else:
                    for k in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, k).copy_(torch.from_numpy(expected[f"rebuilt/{bn_name}.{k}"].copy()))
            net.fc.weight.copy_(torch.from_numpy(expected["rebuilt/fc.weight"].copy()))
            net.fc.bias.copy_(torch.from_numpy(expected["rebuilt/fc.bias"].copy()))
        return net

    loss_fn, added = nn.CrossEntropyLoss(), {}
    for name, net in (("original", original()), ("rebuilt", folded(False)), ("naive", folded(True))):
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        loss_fn(net(x), y).backward()
        optimizer.step()
        with torch.no_grad():
            added[f"step/{name}/loss"] = loss_fn(net(x), y).numpy().reshape(1)
    print("loss after one step:", {k: float(v[0]) for k, v in added.items()})
    save_file({**expected, **added}, path)


add_step_losses()
make_pretrained()
print("sizes:", sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)))
