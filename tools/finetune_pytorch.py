#!/usr/bin/env python3
"""PyTorch's side of the fine-tuning comparison: `resnetkit fine-tune`'s recipe, run in PyTorch.

  tools/finetune_pytorch.py DIR --labels CSV [--from CKPT] [--valid-dir DIR --valid-labels CSV | --valid-fraction F
        | --valid-ids FILE] [--train-size N] [--valid-size N] [--head-epochs N] [--finetune-epochs N]
        [--batch-size N] [--head-lr X] [--head-max-lr X] [--head-weight-decay X] [--lr X] [--max-lr X]
        [--weight-decay X] [--head mlp|linear] [--dropout P] [--crop N] [--normalize imagenet|none]
        [--channel-order rgb|bgr] [--no-augment] [--frozen-bn train|eval] [--seed N] [--threads N]
        [--summary JSON] [--out SAFETENSORS] [--quiet]

Same inputs and defaults as `resnetkit fine-tune` (see `resnetkit fine-tune --help`):
- DIR holds <id>.tif, --labels is a CSV id,label (header optional); classes are the sorted integer labels, or the
  sorted string labels.
- --from is a safetensors state dict with torchvision names (a ResNetKit checkpoint, or torchvision's own); the
  backbone is loaded by name, `fc.*`/`head.*` are ignored and a new head is built: mlp = BatchNorm1d(512),
  Dropout(p), Linear(512, hidden), ReLU, BatchNorm1d(hidden), Dropout(p), Linear(hidden, K); linear = Linear(512, K).
  Preprocessing defaults come from the checkpoint's ResNetKit metadata ("preprocessing": normalisation and channel
  order; imagenet/rgb without it), overridable by --normalize / --channel-order; --crop defaults to 49.
- Phase 1 (--head-epochs): backbone requires_grad=False; its BatchNorms in train mode (--frozen-bn train, the seed's
  and resnetkit's default: batch statistics, running statistics move) or eval mode (--frozen-bn eval).
  AdamW(head params, lr=--head-lr, weight_decay=--head-weight-decay) + OneCycleLR(max_lr=--head-max-lr).
  Phase 2 (--finetune-epochs): everything trainable, AdamW(lr=--lr, weight_decay=--weight-decay) +
  OneCycleLR(max_lr=--max-lr). A fresh optimizer and schedule per phase, the schedule stepped after every step;
  OneCycleLR's defaults (pct_start 0.3, cos, div 25, final div 1e4, beta1 cycled 0.95 -> 0.85 -> 0.95).
- Steps per epoch = floor(train images / batch size) (the last partial batch is dropped, as resnetkit does).
- Train transform (unless --no-augment): random h-flip, v-flip, rotation uniform in +-20 deg (nearest, fill 0),
  then the centre crop; validation: centre crop only. Then /255, ImageNet mean/std if imagenet, BGR if asked.
- Each epoch prints the seed's line `[Epoch: 01/10] loss: ... acc: ... val_loss: ... val_acc: ...` where loss/acc
  average the last round(5 %) of the epoch's steps (at least one) and val_* are eval-mode figures over the
  validation set; --summary writes them all as JSON (final val_acc/val_loss, per-epoch figures, timings).

Validation split: for a like-for-like comparison with resnetkit use --valid-dir/--valid-labels (both tools then see
exactly the same validation images). Without it, --valid-fraction replicates resnetkit's seeded split (SplitMix64 +
Swift's Fisher-Yates shuffle with Lemire's bounded integers, seed ^ 0x5EED) and --train-size its seeded prefix;
--valid-ids FILE (one id per line) instead holds out exactly those ids of DIR.
What cannot match bit-for-bit: the head's initial weights, the per-epoch order, augmentations and dropout masks
(same distributions, different random streams) and float summation order.
"""
import argparse, csv, json, math, os, sys, time

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MASK64 = (1 << 64) - 1


# ---- resnetkit's seeded split, replicated -------------------------------------------------------------------------

class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def next_upper_bound(self, bound):
        """Swift's RandomNumberGenerator.next(upperBound:) (Lemire's nearly divisionless method)."""
        product = self.next() * bound
        low = product & MASK64
        if low < bound:
            t = ((1 << 64) - bound) % bound
            while low < t:
                product = self.next() * bound
                low = product & MASK64
        return product >> 64


def swift_shuffle(items, rng):
    """Swift's MutableCollection.shuffle(using:)."""
    items = list(items)
    amount, current = len(items), 0
    while amount > 1:
        r = rng.next_upper_bound(amount)
        amount -= 1
        items[current], items[current + r] = items[current + r], items[current]
        current += 1
    return items


def swift_round(x):
    """Swift's .rounded(): half away from zero (Python's round() is half to even)."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


# ---- data ---------------------------------------------------------------------------------------------------------

def read_labels(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and len(rows[0]) >= 2 and rows[0][0].lower() == "id" and rows[0][1].lower() == "label":
        rows = rows[1:]
    if not rows:
        sys.exit(f"{path}: no labelled rows (expected id,label)")
    ids, names = [], []
    for i, r in enumerate(rows):
        if len(r) < 2 or not r[0] or not r[1]:
            sys.exit(f"{path}: record {i + 1}: expected id,label")
        ids.append(r[0])
        names.append(r[1].strip())
    return ids, names


def class_names_of(names):
    try:
        return [str(v) for v in sorted({int(n) for n in names})]
    except ValueError:
        return sorted(set(names))


def label_indices(path, names, classes):
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for n in names:
        i = index.get(n)
        if i is None:
            try:
                i = index.get(str(int(n)))
            except ValueError:
                pass
        if i is None:
            sys.exit(f"{path}: label {n} is not one of the classes {', '.join(classes[:10])}")
        out.append(i)
    return out


def read_image(directory, ident):
    base = os.path.join(directory, ident)
    path = base + ".tif" if os.path.exists(base + ".tif") or not os.path.exists(base + ".tiff") else base + ".tiff"
    a = tifffile.imread(path)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    elif a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)           # planar
    a = a[..., :3]
    if a.dtype != np.uint8:                 # resnetkit scales to [0, 1] and back to 8 bits
        a = np.clip(np.round(a.astype(np.float64) / np.iinfo(a.dtype).max * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def load_images(directory, ids, labels, what, quiet):
    pixels, kept_labels, kept_ids, failures = [], [], [], []
    for ident, label in zip(ids, labels):
        try:
            pixels.append(read_image(directory, ident))
            kept_labels.append(label)
            kept_ids.append(ident)
        except Exception as e:  # one bad image does not sink the run (as in resnetkit)
            failures.append(f"{ident}: {e}")
    if not pixels:
        sys.exit(f"{directory}: none of the {len(ids)} labelled images could be read")
    shape = pixels[0].shape
    keep = [i for i, p in enumerate(pixels) if p.shape == shape]
    if len(keep) < len(pixels) or failures:
        log(f"warning: {len(failures) + len(pixels) - len(keep)} {what} image(s) skipped", quiet)
    x = torch.from_numpy(np.stack([pixels[i] for i in keep])).permute(0, 3, 1, 2).contiguous()  # N,3,H,W uint8
    return x, torch.tensor([kept_labels[i] for i in keep]), [kept_ids[i] for i in keep]


def log(message, quiet=False):
    if not quiet:
        print(message, file=sys.stderr, flush=True)


class Preprocess:
    """uint8 [N,3,H,W] -> normalised float batch, optionally augmented, centre-cropped."""

    def __init__(self, crop, normalize, channel_order):
        self.crop = crop
        self.bgr = channel_order == "bgr"
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else ([0.0] * 3, [1.0] * 3)
        if self.bgr:
            mean, std = mean[::-1], std[::-1]
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images, augment=False, generator=None):
        out = []
        for img in images:
            if augment:
                h, v, u = torch.rand(3, generator=generator).tolist()
                if h < 0.5:
                    img = TF.hflip(img)
                if v < 0.5:
                    img = TF.vflip(img)
                img = TF.rotate(img, (u * 2 - 1) * 20.0, interpolation=InterpolationMode.NEAREST, fill=0)
            side = self.crop if self.crop > 0 else min(img.shape[-2:])
            out.append(TF.center_crop(img, [side, side]))
        x = torch.stack(out).float().div_(255)
        if self.bgr:
            x = x.flip(1)
        return (x - self.mean) / self.std


# ---- model --------------------------------------------------------------------------------------------------------

def build_model(checkpoint, head, classes, dropout, hidden, eps, seed):
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = torch.nn.Identity()
    state = load_file(checkpoint)
    wanted = backbone.state_dict()
    backbone_state = {k: v for k, v in state.items() if not (k.startswith("fc.") or k.startswith("head."))}
    missing = [k for k in wanted if k not in backbone_state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in backbone_state if k not in wanted]
    wrong = [f"{k}: expected {list(wanted[k].shape)}, got {list(v.shape)}" for k, v in backbone_state.items()
             if k in wanted and wanted[k].shape != v.shape]
    if missing or unexpected or wrong:
        sys.exit(f"{checkpoint}: not a ResNet-18 backbone: " + "; ".join(
            [f"missing {missing[:3]}"] * bool(missing) + [f"unexpected {unexpected[:3]}"] * bool(unexpected) + wrong[:3]))
    backbone.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in backbone_state.items()},
                             strict=False)
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = eps
    torch.manual_seed(seed)  # the new head: PyTorch's default init (resnetkit draws the same distributions)
    if head == "mlp":
        head_module = torch.nn.Sequential(
            torch.nn.BatchNorm1d(512, eps=eps), torch.nn.Dropout(dropout), torch.nn.Linear(512, hidden),
            torch.nn.ReLU(), torch.nn.BatchNorm1d(hidden, eps=eps), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, classes))
    else:
        head_module = torch.nn.Linear(512, classes)
    return backbone, head_module


def checkpoint_metadata(path):
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    def parse(key):
        try:
            return json.loads(meta[key]) if key in meta else {}
        except json.JSONDecodeError:
            return {}
    return parse("preprocessing"), parse("config")


# ---- training -----------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(backbone, head, images, labels, prep, batch=64):
    backbone.eval(); head.eval()
    total, correct = 0.0, 0
    for first in range(0, len(images), batch):
        logits = head(backbone(prep(images[first:first + batch]))).double()
        y = labels[first:first + batch]
        total += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return total / len(images), correct / len(images)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("dir")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--from", dest="from_", metavar="CKPT", default="model.safetensors")
    ap.add_argument("--valid-dir")
    ap.add_argument("--valid-labels")
    ap.add_argument("--valid-fraction", type=float, default=0.2)
    ap.add_argument("--valid-ids", help="file of ids of DIR (one a line) to hold out instead of a seeded fraction")
    ap.add_argument("--train-size", type=int)
    ap.add_argument("--valid-size", type=int)
    ap.add_argument("--head-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--head-max-lr", type=float, default=1e-2)
    ap.add_argument("--head-weight-decay", type=float, default=0.01)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--max-lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--head", choices=["mlp", "linear"], default="mlp")
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--crop", type=int, default=49)
    ap.add_argument("--normalize", choices=["imagenet", "none"])
    ap.add_argument("--channel-order", choices=["rgb", "bgr"])
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--frozen-bn", choices=["train", "eval"], default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--summary", metavar="JSON", help="write the run's figures here")
    ap.add_argument("--out", metavar="SAFETENSORS", help="write the trained state dict (torchvision names + head.*)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr (epoch lines still on stdout)")
    a = ap.parse_args()

    if a.batch_size < 2:
        sys.exit("--batch-size must be at least 2 (BatchNorm needs two images)")
    if a.head_epochs < 0 or a.finetune_epochs < 0 or a.head_epochs + a.finetune_epochs == 0:
        sys.exit("--head-epochs and --finetune-epochs must be 0 or more, and not both 0")
    if not 0 <= a.valid_fraction < 1 or not 0 <= a.dropout < 1:
        sys.exit("--valid-fraction and --dropout must be in [0, 1)")
    if a.crop != 0 and a.crop < 32:
        sys.exit("--crop must be 0 (none) or at least 32")
    if (a.valid_dir is None) != (a.valid_labels is None):
        sys.exit("--valid-dir and --valid-labels go together")
    torch.set_num_threads(a.threads)

    pre_meta, config = checkpoint_metadata(a.from_)
    normalize = a.normalize or pre_meta.get("normalization", "imagenet")
    channel_order = a.channel_order or pre_meta.get("channelOrder", "rgb")
    eps = float(config.get("batchNormEpsilon", 1e-5))
    hidden = int(config.get("hiddenUnits", 256))
    if int(config.get("baseWidth", 64)) != 64:
        sys.exit(f"{a.from_}: baseWidth {config['baseWidth']}: only ResNet-18's 64 is supported here")

    # Split, as resnetkit's loadData does.
    ids, names = read_labels(a.labels)
    classes = class_names_of(names)
    if len(classes) < 2:
        sys.exit(f"{a.labels}: only one class: a classifier needs at least two")
    labels = label_indices(a.labels, names, classes)
    order = swift_shuffle(range(len(ids)), SplitMix64(a.seed ^ 0x5EED))
    train_idx, valid_idx = order, []
    if a.valid_dir is None:
        if a.valid_ids:
            with open(a.valid_ids) as f:
                held = {line.strip() for line in f if line.strip()}
            valid_idx = [i for i in order if ids[i] in held]
            train_idx = [i for i in order if ids[i] not in held]
        else:
            held = swift_round(len(order) * a.valid_fraction)
            valid_idx, train_idx = order[:held], order[held:]
    if a.train_size is not None:
        train_idx = train_idx[:max(0, a.train_size)]
    t0 = time.perf_counter()
    train_x, train_y, _ = load_images(a.dir, [ids[i] for i in train_idx], [labels[i] for i in train_idx], "training", a.quiet)
    valid_x = valid_y = None
    if a.valid_dir:
        vids, vnames = read_labels(a.valid_labels)
        vlabels = label_indices(a.valid_labels, vnames, classes)
        if a.valid_size is not None:
            vids, vlabels = vids[:max(0, a.valid_size)], vlabels[:max(0, a.valid_size)]
        valid_x, valid_y, _ = load_images(a.valid_dir, vids, vlabels, "validation", a.quiet)
    elif valid_idx:
        if a.valid_size is not None:
            valid_idx = valid_idx[:max(0, a.valid_size)]
        valid_x, valid_y, _ = load_images(a.dir, [ids[i] for i in valid_idx], [labels[i] for i in valid_idx], "validation", a.quiet)
    if len(train_x) < 2:
        sys.exit(f"need at least 2 training images, have {len(train_x)}")
    if a.crop > 0 and min(train_x.shape[-2:]) < a.crop:
        sys.exit(f"--crop {a.crop} is larger than the {train_x.shape[-1]}x{train_x.shape[-2]} images")
    log(f"finetune_pytorch: {len(train_x)} training and {0 if valid_x is None else len(valid_x)} validation images, "
        f"classes {', '.join(classes)}; {normalize}/{channel_order}, crop {a.crop}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads (decoded in {time.perf_counter() - t0:.1f} s)", a.quiet)

    prep = Preprocess(a.crop, normalize, channel_order)
    backbone, head = build_model(a.from_, a.head, len(classes), a.dropout, hidden, eps, a.seed)
    generator = torch.Generator().manual_seed(a.seed)
    steps_per_epoch = max(1, len(train_x) // a.batch_size)
    window = max(1, swift_round(0.05 * steps_per_epoch))
    phases = [dict(name="head", epochs=a.head_epochs, frozen=True, lr=a.head_lr, max_lr=a.head_max_lr, wd=a.head_weight_decay),
              dict(name="fine-tune", epochs=a.finetune_epochs, frozen=False, lr=a.lr, max_lr=a.max_lr, wd=a.weight_decay)]
    summary = dict(tool="pytorch", torch=torch.__version__, threads=torch.get_num_threads(), classes=classes,
                   train_images=len(train_x), valid_images=0 if valid_x is None else len(valid_x),
                   steps_per_epoch=steps_per_epoch, normalize=normalize, channel_order=channel_order, crop=a.crop,
                   frozen_bn=a.frozen_bn, augment=not a.no_augment, options=vars(a), epochs=[], phase_seconds=[])
    summary["options"]["from"] = summary["options"].pop("from_")

    for p_index, phase in enumerate(phases):
        if phase["epochs"] <= 0:
            continue
        for prm in backbone.parameters():
            prm.requires_grad = not phase["frozen"]
        params = [prm for prm in list(backbone.parameters()) + list(head.parameters()) if prm.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=phase["lr"], weight_decay=phase["wd"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=phase["max_lr"],
                                                       total_steps=phase["epochs"] * steps_per_epoch)
        log(f"finetune_pytorch: phase {p_index + 1} ({phase['name']}): {phase['epochs']} epochs of {steps_per_epoch} steps", a.quiet)
        started = time.perf_counter()
        for epoch in range(phase["epochs"]):
            backbone.train(); head.train()
            if phase["frozen"] and a.frozen_bn == "eval":
                backbone.eval()  # frozen BatchNorms use (and keep) their running statistics
            perm = torch.randperm(len(train_x), generator=generator)
            losses, accuracies = [], []
            for step in range(steps_per_epoch):
                idx = perm[step * a.batch_size:(step + 1) * a.batch_size]
                x = prep(train_x[idx], augment=not a.no_augment, generator=generator)
                y = train_y[idx]
                logits = head(backbone(x))
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                accuracies.append((logits.argmax(1) == y).float().mean().item())
                if not a.quiet and (step + 1) % 25 == 0:
                    print(f"\r[Epoch: {epoch + 1:02d}/{phase['epochs']:02d}] step {step + 1}/{steps_per_epoch}",
                          end="", file=sys.stderr, flush=True)
            if not a.quiet:
                print("\r", end="", file=sys.stderr)
            avg_loss = sum(losses[-window:]) / len(losses[-window:])
            avg_acc = sum(accuracies[-window:]) / len(accuracies[-window:])
            line = f"[Epoch: {epoch + 1:02d}/{phase['epochs']:02d}] loss: {avg_loss:.4f} acc: {avg_acc:.4f}"
            record = dict(phase=p_index + 1, epoch=epoch + 1, loss=avg_loss, acc=avg_acc)
            if valid_x is not None and len(valid_x) > 0:
                val_loss, val_acc = evaluate(backbone, head, valid_x, valid_y, prep)
                line += f" val_loss: {val_loss:.4f} val_acc: {val_acc:.4f}"
                record.update(val_loss=val_loss, val_acc=val_acc)
            record["step_losses"], record["step_accuracies"] = losses, accuracies
            summary["epochs"].append(record)
            print(line, flush=True)
        summary["phase_seconds"].append(dict(phase=p_index + 1, seconds=time.perf_counter() - started))

    last = summary["epochs"][-1]
    summary["final_val_acc"] = last.get("val_acc")
    summary["final_val_loss"] = last.get("val_loss")
    if a.summary:
        tmp = a.summary + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, a.summary)
    if a.out:
        state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
        prefix = "head." if a.head == "mlp" else "fc."
        names = {"0": "bn1", "2": "fc1", "4": "bn2", "6": "fc2"}
        for k, v in head.state_dict().items():
            if a.head == "mlp":
                layer, rest = k.split(".", 1)
                k = f"{names[layer]}.{rest}"
            state[prefix + k] = v.detach().contiguous()
        save_file(state, a.out, metadata=dict(preprocessing=json.dumps(
            dict(crop=a.crop, normalization=normalize, channelOrder=channel_order)), classes=json.dumps(classes)))
    if summary["final_val_acc"] is not None:
        log(f"finetune_pytorch: final val_acc {summary['final_val_acc']:.4f} val_loss {summary['final_val_loss']:.4f}", a.quiet)


if __name__ == "__main__":
    main()
