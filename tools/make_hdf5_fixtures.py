"""Makes the HDF5 importer's fixtures in fixtures/hdf5/ (run with /opt/pyref/bin/python from the repository root).

A ResNet-18 with torchvision's structure and names at base width 8 (so the files are small), random weights and
non-trivial BatchNorm statistics, written the ways h5py users and Keras write weights, plus PyTorch's logits for a
committed input. Keras files are built with h5py exactly as Keras 2's `save_weights` / `model.save` lay them out
(`model_weights` group or the root, `layer_names` as a fixed-length byte-string array, split into `layer_names0`,
`layer_names1`, ... when large, a group per layer with `weight_names`, datasets at `<layer>/<layer>/kernel:0`),
and their expected logits are computed in PyTorch from the same weights with the Keras epsilon.
"""
import json
import os

import h5py
import numpy as np
import torch
from torch import nn

from fixture_models import ResNet18, randomise_batchnorm

OUT = "fixtures/hdf5"
WIDTH = 4  # base width of the good files (about 180 KB each)
BAD_WIDTH = 2  # the bad files only need to trigger messages


def make_model(classes, head="linear", seed=0, width=WIDTH):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    model = ResNet18(width, classes, head=head)
    randomise_batchnorm(model, generator)
    return model.eval()


def logits(model, x, eps=None):
    if eps is not None:
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.eps = eps
    with torch.no_grad():
        return model(x).numpy().astype("<f4")


def save_f32(name, array):
    np.ascontiguousarray(array, dtype="<f4").tofile(os.path.join(OUT, name))


def write_flat(path, state, dtype=None, counters=True):
    with h5py.File(os.path.join(OUT, path), "w") as f:
        for key, value in state.items():
            if key.endswith("num_batches_tracked") and not counters:
                continue
            data = value.numpy()
            if dtype is not None and data.dtype == np.float32:
                data = data.astype(dtype)
            f.create_dataset(key, data=data)


def write_nested(path, state):
    with h5py.File(os.path.join(OUT, path), "w") as f:
        for key, value in state.items():
            if not key.endswith("num_batches_tracked"):
                f.create_dataset(key.replace(".", "/"), data=value.numpy())


# ---- Keras layout ----------------------------------------------------------------------------------------------

def keras_layers(state, conv_bias=None, projection_bn_first=False):
    """The model as Keras layers in a Keras-applications-like forward order: per block conv_1, bn_1, relu, conv_2,
    the projection conv_0, bn_2, bn_0, add, relu (so BatchNorms keep their convolutions' order), or with
    `projection_bn_first` bn_0 before bn_2 (a valid topological order in which only the graph tells which
    BatchNorm follows which convolution). Also returns BatchNorm name → the convolution feeding it."""
    counter = {"conv2d": 0, "batch_normalization": 0, "activation": 0, "add": 0}
    feeds = {}

    def name(kind):
        n = counter[kind]
        counter[kind] += 1
        return kind if n == 0 else f"{kind}_{n}"

    conv_names = {}

    def conv(prefix):
        layer = name("conv2d")
        conv_names[prefix] = layer
        kernel = state[f"{prefix}.weight"].numpy().transpose(2, 3, 1, 0)  # OIHW → HWIO
        weights = [(f"{layer}/kernel:0", kernel)]
        if conv_bias is not None:
            weights.append((f"{layer}/bias:0", conv_bias[prefix]))
        return (layer, weights)

    def bn(prefix):
        layer = name("batch_normalization")
        conv_prefix = prefix.replace("downsample.1", "downsample.0").replace("bn", "conv")
        feeds[layer] = conv_names[conv_prefix]
        return (layer, [(f"{layer}/gamma:0", state[f"{prefix}.weight"].numpy()),
                        (f"{layer}/beta:0", state[f"{prefix}.bias"].numpy()),
                        (f"{layer}/moving_mean:0", state[f"{prefix}.running_mean"].numpy()),
                        (f"{layer}/moving_variance:0", state[f"{prefix}.running_var"].numpy())])

    layers = [("input_1", []), conv("conv1"), bn("bn1"), (name("activation"), []), ("max_pooling2d", [])]
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}"
            has_down = f"{p}.downsample.0.weight" in state
            layers += [conv(f"{p}.conv1"), bn(f"{p}.bn1"), (name("activation"), []), conv(f"{p}.conv2")]
            if has_down:
                layers.append(conv(f"{p}.downsample.0"))
            norms = [f"{p}.bn2"] + ([f"{p}.downsample.1"] if has_down else [])
            layers += [bn(n) for n in (reversed(norms) if projection_bn_first else norms)]
            layers += [(name("add"), []), (name("activation"), [])]
    layers.append(("global_average_pooling2d", []))
    layers.append(("dense", [("dense/kernel:0", state["fc.weight"].numpy().T), ("dense/bias:0", state["fc.bias"].numpy())]))
    return layers, feeds


def write_keras(path, layers, model_weights=True, split=False, model_config=None, dtype=np.float32):
    with h5py.File(os.path.join(OUT, path), "w") as f:
        group = f.create_group("model_weights") if model_weights else f
        if model_config is not None:
            f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
        for target in {id(f): f, id(group): group}.values():
            target.attrs["keras_version"] = b"2.13.1"
            target.attrs["backend"] = b"tensorflow"
        names = np.array([n.encode("utf8") for n, _ in layers])
        if split:
            half = len(names) // 2
            group.attrs["layer_names0"] = names[:half]
            group.attrs["layer_names1"] = names[half:]
        else:
            group.attrs["layer_names"] = names
        for layer, weights in layers:
            g = group.create_group(layer)
            # Keras stores an empty list as np.asarray([]): an empty float64 array.
            g.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in weights]) if weights else np.asarray([])
            for weight_name, value in weights:
                g.create_dataset(weight_name, data=np.asarray(value, dtype=dtype))


def model_config(layers, feeds, eps):
    """Keras 2's model_config JSON: every layer with its class, config and inbound nodes (BatchNorms name their
    convolution; convolutions that PyTorch pads at stride 2 name the ZeroPadding2D before them; the rest of the
    graph is not needed by the importer and left empty). Padding is PyTorch's, the way keras.applications builds
    it: ZeroPadding2D then 'valid' where a stride-2 layer pads, 'same' for the stride-1 3x3 convolutions."""
    def describe(layer, weights):
        if layer.startswith("conv2d"):
            kernel = weights[0][1].shape
            stride = 2 if kernel[2] != kernel[3] else 1  # the stem and the first conv and projection of stages 2-4
            pad = kernel[0] // 2
            entry = {"class_name": "Conv2D", "name": layer, "inbound_nodes": [],
                     "config": {"name": layer, "kernel_size": list(kernel[:2]), "strides": [stride, stride],
                                "padding": "same" if stride == 1 and pad else "valid"}}
            if stride == 2 and pad:
                padding = {"class_name": "ZeroPadding2D", "name": f"{layer}_pad", "inbound_nodes": [],
                           "config": {"name": f"{layer}_pad", "padding": [[pad, pad], [pad, pad]]}}
                entry["inbound_nodes"] = [[[f"{layer}_pad", 0, 0, {}]]]
                return [padding, entry]
            return [entry]
        if layer in feeds:
            return [{"class_name": "BatchNormalization", "name": layer,
                     "config": {"name": layer, "axis": [3], "momentum": 0.99, "epsilon": eps},
                     "inbound_nodes": [[[feeds[layer], 0, 0, {}]]]}]
        kind = "Conv2D" if layer.startswith("conv2d") else "Dense" if layer.startswith("dense") else "Activation"
        return [{"class_name": kind, "name": layer, "config": {"name": layer}, "inbound_nodes": []}]
    return {"class_name": "Functional",
            "config": {"name": "resnet18", "layers": [entry for n, w in layers for entry in describe(n, w)]}}


def main():
    os.makedirs(OUT, exist_ok=True)
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(7))
    save_f32("input_2x3x40x40.f32", x.numpy())

    model = make_model(classes=5)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_f32("logits_linear.f32", logits(model, x))
    write_flat("flat.h5", state)
    write_nested("nested.h5", state)
    write_flat("float64.h5", state, dtype=np.float64, counters=False)

    # float16: PyTorch's logits for the weights as float16 stores them.
    half = {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}
    model16 = make_model(classes=5)
    model16.load_state_dict(half)
    save_f32("logits_float16.f32", logits(model16, x))
    write_flat("float16.h5", state, dtype=np.float16)

    mlp = make_model(classes=2, head="mlp", seed=3)
    save_f32("logits_mlp.f32", logits(mlp, x))
    write_flat("mlp.h5", mlp.state_dict())

    # Keras, model.save layout with model_config naming keras.applications' epsilon 1.001e-5.
    layers, feeds = keras_layers(state, projection_bn_first=True)
    write_keras("keras.h5", layers, model_weights=True, model_config=model_config(layers, feeds, 1.001e-5))
    save_f32("logits_keras.f32", logits(make_model(classes=5), x, eps=1.001e-5))

    # Keras save_weights layout at the root, layer_names split in two, convolution biases, no model_config (eps 1e-3).
    generator = torch.Generator().manual_seed(11)
    conv_bias = {}
    biased = make_model(classes=5)
    for name, module in biased.named_modules():
        if isinstance(module, nn.Conv2d):
            b = 0.1 * torch.randn(module.out_channels, generator=generator)
            conv_bias[name] = b.numpy()
            module.bias = nn.Parameter(b)
    write_keras("keras_split.h5", keras_layers(state, conv_bias)[0], model_weights=False, split=True)
    save_f32("logits_keras_split.f32", logits(biased, x, eps=1e-3))

    # A nested model (Keras 2 stores a sub-model as one layer listing all its weights), float64, at the root.
    layers = keras_layers(state)[0]
    inner = [w for _, ws in layers[:-1] for w in ws]
    nested_layers = [("input_2", []), ("resnet18", inner), ("global_average_pooling2d", []), layers[-1]]
    write_keras("keras_nested_float64.h5", nested_layers, model_weights=False, dtype=np.float64)
    save_f32("logits_keras_default_eps.f32", logits(make_model(classes=5), x, eps=1e-3))

    # ---- bad files ----
    state = {k: v.detach().clone() for k, v in make_model(classes=5, width=BAD_WIDTH).state_dict().items()}
    write_flat("small.h5", state)
    rng = np.random.default_rng(5)
    with open(os.path.join(OUT, "bad_random.h5"), "wb") as f:
        f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    flat_bytes = open(os.path.join(OUT, "small.h5"), "rb").read()
    os.remove(os.path.join(OUT, "small.h5"))
    with open(os.path.join(OUT, "bad_truncated.h5"), "wb") as f:
        f.write(flat_bytes[: len(flat_bytes) // 2])

    def variant(path, edit):
        s = dict(state)
        edit(s)
        write_flat(path, s)

    variant("bad_resnet34.h5", lambda s: s.update({k.replace("layer1.1", "layer1.2"): v for k, v in state.items() if k.startswith("layer1.1.")}))
    variant("bad_resnet50.h5", lambda s: s.update({"layer1.0.conv3.weight": torch.zeros(8, 2, 1, 1)}))
    variant("bad_misshapen.h5", lambda s: s.update({"layer2.0.downsample.0.weight": torch.zeros(4, 2, 3, 3)}))
    variant("bad_missing.h5", lambda s: s.pop("layer3.1.bn2.running_var"))
    with h5py.File(os.path.join(OUT, "bad_absurd.h5"), "w") as f:
        for key, value in state.items():
            if key != "fc.weight":
                f.create_dataset(key, data=value.numpy())
        # Chunked and never written: the file stays tiny while the header claims 2^40 elements.
        f.create_dataset("fc.weight", shape=(1 << 20, 1 << 20), dtype="f4", chunks=(1, 1024))
    with h5py.File(os.path.join(OUT, "bad_strings.h5"), "w") as f:
        for key, value in state.items():
            if key != "fc.bias":
                f.create_dataset(key, data=value.numpy())
        f.create_dataset("fc.bias", data=np.array([b"a", b"b", b"c", b"d", b"e"]))
    variant("bad_nan.h5", lambda s: s.update({"fc.bias": torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0])}))
    with h5py.File(os.path.join(OUT, "bad_too_many_values.h5"), "w") as f:
        for key, value in state.items():
            f.create_dataset(key, data=value.numpy())
        # Each below the per-dataset limit, together far beyond the model: refused before anything is read.
        for n in range(4):
            f.create_dataset(f"extra.{n}", shape=(1 << 25,), dtype="f4", chunks=(1 << 16,))
    layers = keras_layers(state)[0]
    write_keras("bad_keras_missing_conv.h5", [l for l in layers if l[0] != "conv2d_5"], model_weights=True)
    depthwise = [(n, [(w.replace("kernel", "depthwise_kernel"), v) for w, v in ws]) if n == "conv2d_5" else (n, ws) for n, ws in layers]
    write_keras("bad_keras_depthwise.h5", depthwise, model_weights=True)
    misshapen = [(n, [(w, np.concatenate([v, v[:1]]) if n == "batch_normalization_3" else v) for w, v in ws]) for n, ws in layers]
    write_keras("bad_keras_misshapen.h5", misshapen, model_weights=True)


if __name__ == "__main__":
    main()
