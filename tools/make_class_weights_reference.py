"""Writes fixtures/class_weights_reference.safetensors: PyTorch's weighted cross-entropy on one batch, for
ResNetKit's `fine-tune --class-weights` (Tests/ResNetModelTests/ClassWeightsReferenceTests.swift).

The model is tools/fixture_models.py's ResNet-18 at base width 4 with the seed's MLP head (16 hidden units, no
dropout) and 3 classes, so that the weights of three classes and a batch where they occur unevenly are checked.
It runs in train mode (BatchNorm with batch statistics), the loss is `nn.CrossEntropyLoss(weight=w)` (reduction
mean: Σ w[y]·nll / Σ w[y]), and the whole model is trainable.

  init/<name>   the state dict (torchvision names)      x [6,3,40,40] NCHW in [0,1)   y [6] int64
  weights [3]   the class weights                       logits [6,3]   loss [1]   unweighted_loss [1]
  grad/<name>   the weighted loss's gradient for every parameter

Run: python3 tools/make_class_weights_reference.py (needs torch, torchvision, safetensors; not needed by users or CI).
"""
import os

import torch
from safetensors.torch import save_file
from torch import nn

from fixture_models import ResNet18

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "class_weights_reference.safetensors")


def main():
    torch.manual_seed(13)
    model = ResNet18(4, 3, head="mlp", hidden=16)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    init = {f"init/{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    x = torch.rand(6, 3, 40, 40)
    y = torch.tensor([0, 2, 0, 1, 0, 2])
    weights = torch.tensor([0.4, 2.5, 1.3])
    model.train()
    logits = model(x)
    loss = nn.CrossEntropyLoss(weight=weights)(logits, y)
    loss.backward()
    tensors = dict(init)
    tensors.update({"x": x, "y": y, "weights": weights, "logits": logits.detach(), "loss": loss.detach().reshape(1),
                    "unweighted_loss": nn.CrossEntropyLoss()(logits.detach(), y).reshape(1)})
    for name, p in model.named_parameters():
        tensors[f"grad/{name}"] = p.grad.contiguous()
    save_file(tensors, OUT, metadata={"producer": "tools/make_class_weights_reference.py", "torch": torch.__version__})


if __name__ == "__main__":
    main()
