"""The ResNet-18 the fixture generators build (run them with /opt/pyref/bin/python; not needed by users or CI)."""
import functools

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


class ResNet18(nn.Module):
    """torchvision's resnet18 (same module names) at any base width, with a linear or the seed's MLP head."""

    def __init__(self, width, classes, eps=1e-5, head="linear", hidden=16):
        super().__init__()
        norm = functools.partial(nn.BatchNorm2d, eps=eps)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for stage, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if stage == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), norm(planes))
            blocks = [BasicBlock(inplanes, planes, stride, down, norm_layer=norm), BasicBlock(planes, planes, norm_layer=norm)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_kind = head
        if head == "linear":
            self.fc = nn.Linear(8 * width, classes)
        else:
            self.head = nn.Module()
            self.head.bn1 = nn.BatchNorm1d(8 * width, eps=eps)
            self.head.fc1 = nn.Linear(8 * width, hidden)
            self.head.bn2 = nn.BatchNorm1d(hidden, eps=eps)
            self.head.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        if self.head_kind == "linear":
            return self.fc(x)
        h = self.head
        return h.fc2(h.bn2(torch.relu(h.fc1(h.bn1(x)))))


def randomise_batchnorm(model, generator):
    """BatchNorm parameters and statistics away from their defaults, so that a file that drops or swaps them shows."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=generator) + 0.5
            m.bias.data = 0.1 * torch.randn(n, generator=generator)
            m.running_mean = 0.1 * torch.randn(n, generator=generator)
            m.running_var = torch.rand(n, generator=generator) + 0.5
            m.num_batches_tracked.fill_(1000)
