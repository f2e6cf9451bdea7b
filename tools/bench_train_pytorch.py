# PyTorch counterpart of `resnetkit-bench train`: training steps/s and images/s at 49x49 (or --side), head phase (frozen
# backbone left in train mode, as the seed) and whole model, 2 threads.
# With --precision bf16: the forward pass and loss under CPU bf16 autocast (PyTorch's mixed precision).
#   bench_train_pytorch.py [--batches 16,64] [--side 49] [--steps 10] [--phases head-train,whole] [--precision fp32,bf16]
import argparse
import time
import torch, torchvision

parser = argparse.ArgumentParser()
parser.add_argument("--batches", default="16,64")
parser.add_argument("--side", type=int, default=49)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--phases", default="head-train,whole")
parser.add_argument("--precision", default="fp32")
args = parser.parse_args()
torch.set_num_threads(2)

def model():
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = torch.nn.Identity()
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(512), torch.nn.Dropout(0.5), torch.nn.Linear(512, 256),
                               torch.nn.ReLU(), torch.nn.BatchNorm1d(256), torch.nn.Dropout(0.5), torch.nn.Linear(256, 2))
    return torch.nn.Sequential(backbone, head).train()

steps = args.steps
phases = [p for p in (("head-train", "head (frozen backbone)", True), ("whole", "whole model", False))
          if p[0] in args.phases.split(",")]
side = args.side
print(f"PyTorch {torch.__version__}: ResNet-18 + MLP head, {side}x{side}, {steps} timed steps after 2 warm-up steps")
for batch in (int(b) for b in args.batches.split(",")):
    x = torch.rand(batch, 3, side, side)
    y = torch.arange(batch) % 2
    for (_, phase, frozen), precision in ((p, q) for p in phases for q in args.precision.split(",")):
        m = model()
        for p in m[0].parameters():
            p.requires_grad = not frozen
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
        def step():
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        step(); step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - start
        print(f"batch {batch:3d}  {precision}  {phase:<24} {steps / seconds:7.2f} steps/s  {steps * batch / seconds:7.1f} images/s")
