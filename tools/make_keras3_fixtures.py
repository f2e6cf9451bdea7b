"""Makes fixtures/keras3/: Keras 3 ResNet-18s (base width 2) saved as `.weights.h5` and `.keras`, with Keras' own
logits on the committed 96x96 and 49x49 inputs of fixtures/pth (run from the repository root:
KERAS_BACKEND=torch python3 tools/make_keras3_fixtures.py).

In `linear` and `mlp` every stride-2 layer pads explicitly (ZeroPadding2D, then 'valid'), the way PyTorch pads,
and stride-1 3x3 convolutions use 'same' (symmetric at stride 1), so the models compute exactly what a torchvision
ResNet-18 with these weights computes. `same.keras` and `same.h5` (Keras' legacy HDF5 format, with its model
config) are built the way popular Keras ResNet-18 code builds them: padding='same' on every layer, stride 2
included, so TensorFlow pads even-sized inputs one pixel more at the bottom and right. BatchNormalization keeps
Keras' default epsilon (1e-3).
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

OUT = "fixtures/keras3"
INPUTS = "fixtures/pth"


def conv_bn(x, filters, kernel, stride, name, same=False):
    if same:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    elif stride == 2:
        pad = kernel // 2
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=2, padding="valid", use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def resnet18(width, classes, head="linear", hidden=8, same=False):
    inputs = keras.Input((None, None, 3))
    if same:
        x = layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    else:
        x = layers.ZeroPadding2D(3, name="stem_pad")(inputs)
        x = layers.Conv2D(width, 7, strides=2, use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if same:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool")(x)
    else:
        x = layers.ZeroPadding2D(1, name="pool_pad")(x)  # after ReLU: zero padding is max pooling's -inf padding
        x = layers.MaxPooling2D(3, strides=2, name="pool")(x)
    channels = width
    for stage, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"layer{stage + 1}_{block}"
            y = conv_bn(x, planes, 3, stride, f"{name}_1", same)
            y = layers.ReLU(name=f"{name}_relu1")(y)
            y = conv_bn(y, planes, 3, 1, f"{name}_2", same)
            shortcut = conv_bn(x, planes, 1, stride, f"{name}_down", same) if stride != 1 or channels != planes else x
            x = layers.ReLU(name=f"{name}_relu2")(layers.Add(name=f"{name}_add")([y, shortcut]))
            channels = planes
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    if head == "linear":
        x = layers.Dense(classes, name="fc")(x)
    else:
        x = layers.BatchNormalization(name="head_bn1")(x)
        x = layers.Dropout(0.5)(x)
        x = layers.Dense(hidden, activation="relu", name="head_fc1")(x)
        x = layers.BatchNormalization(name="head_bn2")(x)
        x = layers.Dropout(0.5)(x)
        x = layers.Dense(classes, name="head_fc2")(x)
    return keras.Model(inputs, x)


def randomise_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), 0.1 * rng.standard_normal(n),
                               0.1 * rng.standard_normal(n), rng.uniform(0.5, 1.5, n)])


def main():
    os.makedirs(OUT, exist_ok=True)
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(6)
    inputs = {side: np.fromfile(f"{INPUTS}/input_2x3x{side}x{side}.f32", dtype="<f4").reshape(2, 3, side, side)
              for side in (96, 49)}
    for name, model in [("linear", resnet18(2, 3)), ("mlp", resnet18(2, 2, head="mlp"))]:
        randomise_batchnorm(model, rng)
        # One file of each kind keeps the fixtures small: the linear model as .weights.h5, the MLP one as .keras.
        if name == "linear":
            model.save_weights(os.path.join(OUT, f"{name}.weights.h5"))
        else:
            model.save(os.path.join(OUT, f"{name}.keras"))
        write_logits(model, name, inputs)
    # After the others, so their random draws (and files) stay as they were.
    same = resnet18(2, 3, same=True)
    randomise_batchnorm(same, rng)
    same.save(os.path.join(OUT, "same.keras"))
    same.save(os.path.join(OUT, "same.h5"))  # the legacy HDF5 format: weights plus model_config
    write_logits(same, "same", inputs)


def write_logits(model, name, inputs):
    for side, x in inputs.items():
        logits = keras.ops.convert_to_numpy(model(np.transpose(x, (0, 2, 3, 1)), training=False))
        np.ascontiguousarray(logits, dtype="<f4").tofile(os.path.join(OUT, f"{name}.logits{side}.f32"))


if __name__ == "__main__":
    main()
